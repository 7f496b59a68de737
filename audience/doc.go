// Package audience turns an automation's audience definition into
// recipients: it runs audience scripts safely (script.go), parses their CSV
// or JSON Lines output (parse.go), reads SQL audiences (sql.go) and resolves
// device tokens (tokens.go). Everything streams: an audience is never held
// whole in memory.
package audience
