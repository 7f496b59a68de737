package fcmtest

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Scopes that let an access token send through FCM.
const (
	ScopeFirebaseMessaging = "https://www.googleapis.com/auth/firebase.messaging"
	ScopeCloudPlatform     = "https://www.googleapis.com/auth/cloud-platform"
)

const jwtBearerGrant = "urn:ietf:params:oauth:grant-type:jwt-bearer"

// serveToken is Google's OAuth2 token endpoint for the JWT-bearer grant
// (RFC 7523) of a service account: a JWT signed with the account's key is
// exchanged for a short-lived access token.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.tokenRequests++
	s.mu.Unlock()
	if r.Method != http.MethodPost {
		writeNotFound(w, r)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "Could not parse the request body.")
		return
	}
	switch gt := r.PostForm.Get("grant_type"); gt {
	case jwtBearerGrant:
	case "":
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "Missing required parameter: grant_type")
		return
	default:
		writeOAuthError(w, http.StatusBadRequest, "unsupported_grant_type", "Invalid grant_type: "+gt)
		return
	}
	assertion := r.PostForm.Get("assertion")
	if assertion == "" {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "Missing required parameter: assertion")
		return
	}
	scoped, errCode, errDesc := s.checkAssertion(assertion)
	if errCode != "" {
		writeOAuthError(w, http.StatusBadRequest, errCode, errDesc)
		return
	}

	b := make([]byte, 48)
	rand.Read(b)
	tok := "ya29.c." + base64.RawURLEncoding.EncodeToString(b)
	ttl := s.opts.TokenTTL
	s.mu.Lock()
	s.tokens[tok] = accessToken{expiry: s.now().Add(ttl), scoped: scoped}
	s.mu.Unlock()

	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate")
	json.NewEncoder(w).Encode(struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}{tok, int64(ttl / time.Second), "Bearer"})
}

// checkAssertion verifies a JWT-bearer assertion as Google does and says
// whether the token to issue may send through FCM. A refusal comes back as
// an OAuth2 error code and description in Google's words.
func (s *Server) checkAssertion(assertion string) (scoped bool, errCode, errDesc string) {
	const (
		badSignature = "Invalid JWT Signature."
		badTime      = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. " +
			"Check your iat and exp values in the JWT claim."
	)
	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(assertion, claims, func(t *jwt.Token) (any, error) {
		if kid, _ := t.Header["kid"].(string); kid != "" && kid != s.keyID {
			return nil, errors.New("unknown key id")
		}
		return &s.key.PublicKey, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithoutClaimsValidation())
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return false, "invalid_grant", "Invalid JWT: the assertion is not a well-formed JWT."
	case err != nil:
		return false, "invalid_grant", badSignature
	}

	if iss, _ := claims["iss"].(string); iss != s.email {
		return false, "invalid_grant", "Invalid grant: account not found"
	}
	if aud, _ := claims.GetAudience(); !slices.Contains(aud, s.TokenURI()) {
		return false, "invalid_grant", "Invalid JWT: Failed audience check. The right audience is " + s.TokenURI()
	}
	iat, err1 := claims.GetIssuedAt()
	exp, err2 := claims.GetExpirationTime()
	if err1 != nil || err2 != nil || iat == nil || exp == nil {
		return false, "invalid_grant", badTime
	}
	// Google allows a few minutes of clock skew and at most an hour of
	// lifetime.
	const skew = 5 * time.Minute
	now := s.now()
	if exp.Sub(iat.Time) > time.Hour || iat.After(now.Add(skew)) || !exp.After(now.Add(-skew)) || !exp.After(iat.Time) {
		return false, "invalid_grant", badTime
	}
	scope, _ := claims["scope"].(string)
	if strings.TrimSpace(scope) == "" {
		return false, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
	}
	// Google issues a token for any scope; FCM refuses it later (403
	// insufficient scopes) if none of its scopes is in it.
	for sc := range strings.FieldsSeq(scope) {
		if sc == ScopeFirebaseMessaging || sc == ScopeCloudPlatform {
			scoped = true
		}
	}
	return scoped, "", ""
}

func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache, no-store, max-age=0, must-revalidate")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}{code, desc})
}
