// Package cron parses cron expressions and computes their fire times in an
// IANA time zone, with the daylight-saving semantics of cronie (the cron
// daemon shipped by most Linux distributions).
//
// # Syntax
//
// An expression has five fields
//
//	minute hour day-of-month month day-of-week
//
// or six, with a leading seconds field. With five fields the second is 0.
// Each field is a comma-separated list of items; an item is "*", a number,
// a range "a-b", or one of those followed by a step: "*/n", "a-b/n", or
// "a/n" (a through the field's maximum, every n). Months may be written
// JAN-DEC and days of the week SUN-SAT, in any case, also inside ranges.
// Day-of-week 0 and 7 both mean Sunday. "?" means "*" in the day-of-month
// and day-of-week fields. The descriptors @yearly, @annually, @monthly,
// @weekly, @daily, @midnight and @hourly are accepted; @every and @reboot
// are not.
//
// As in Vixie cron and cronie, when both day-of-month and day-of-week are
// restricted (neither field starts with "*" or "?"), a day matches if
// either field matches; otherwise both must match. So "0 0 13 * FRI" fires
// on every 13th and on every Friday, while "0 0 */2 * FRI" fires only on
// Fridays that fall on an odd day of the month.
//
// Expressions that can never fire, such as "0 0 30 2 *", are rejected by
// [Parse].
//
// # Daylight saving time
//
// Fields always match the wall clock in the location passed to
// [Schedule.Next]. What happens when that wall clock jumps depends on the
// hour field, exactly as in cronie:
//
// Wildcard-hour schedules (the hour field starts with "*", such as "*" or
// "*/2", and @hourly) follow real elapsed time. They fire at every instant
// whose local wall clock matches. Local times that are skipped by a
// spring-forward transition never fire, and local times that occur twice
// at a fall-back transition fire twice, one real hour (or whatever the
// shift is) apart. In America/New_York, "30 * * * *" fires at 01:30 EST
// and then 03:30 EDT on spring-forward day, and at 00:30 EDT, 01:30 EDT,
// 01:30 EST and 02:30 EST on fall-back day.
//
// Fixed-hour schedules (every other hour field, such as "2", "1-3" or
// "9,17") are meant to run once per matching local time, so each
// matching wall-clock time is mapped to exactly one instant:
//
//   - A local time that exists once fires at that instant.
//   - A local time inside a spring-forward gap fires at the first instant
//     after the gap (the transition itself, e.g. 03:00 EDT). All matching
//     times inside one gap, plus a matching time equal to the end of the
//     gap, collapse into that single instant, so "30 2 * * *",
//     "*/15 2 * * *" and "0 2,3 * * *" each fire exactly once at 03:00 EDT
//     on spring-forward day.
//   - A local time repeated by a fall-back transition fires only at its
//     earlier occurrence: "30 1 * * *" fires at 01:30 EDT, never at
//     01:30 EST.
//
// Nothing assumes that shifts are one hour long or happen at 02:00: 30
// minute shifts (Australia/Lord_Howe), transitions at midnight
// (America/Havana, Asia/Beirut) and whole skipped days (Pacific/Apia on
// 2011-12-30) follow the same rules. When a whole day is skipped, a daily
// fixed-hour schedule fires once, at the first instant after the gap.
//
// Fire times have whole-second precision. [Schedule.Next] searches at most
// about ten years ahead.
package cron
