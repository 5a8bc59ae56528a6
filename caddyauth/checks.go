package caddyauth

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/netip"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// outcome is what the checks of a request decided. The failures are in the
// order the checks run; the first check that fails decides the answer.
type outcome uint8

const (
	authenticated    outcome = iota
	noCredentials            // check 1: no well-formed Authorization header
	ipBanned                 // check 2: too many failures from the client IP
	captchaRequired          // check 3: the Basic user must solve a CAPTCHA
	invalidToken             // check 4: unknown, revoked, expired or not the Basic user's
	notPermitted             // check 5: user disabled or not in allow_groups
	ipNotPermitted           // check 6: client IP outside allow_ips or the token's allowed_ips
	headerMismatch           // check 7: a required header is missing or wrong
	scopeTooNarrow           // check 8: a read-only token on a writing method
	storeUnavailable         // the store could not be asked
)

// outcomeInfo is how an outcome is answered and logged.
type outcomeInfo struct {
	status int
	// seraph is the X-Seraph-LoginReason value Atlassian clients read.
	seraph string
	// code names the outcome in log lines; stable, for fail2ban filters.
	code string
}

var outcomes = [...]outcomeInfo{
	authenticated:    {http.StatusOK, "OK", "ok"},
	noCredentials:    {http.StatusUnauthorized, "AUTHENTICATED_FAILED", "no_credentials"},
	ipBanned:         {http.StatusTooManyRequests, "AUTHENTICATION_DENIED", "ip_banned"},
	captchaRequired:  {http.StatusForbidden, "AUTHENTICATION_DENIED", "captcha_required"},
	invalidToken:     {http.StatusUnauthorized, "AUTHENTICATED_FAILED", "invalid_token"},
	notPermitted:     {http.StatusForbidden, "AUTHORISATION_FAILED", "user_not_permitted"},
	ipNotPermitted:   {http.StatusForbidden, "AUTHORISATION_FAILED", "ip_not_permitted"},
	headerMismatch:   {http.StatusForbidden, "AUTHORISATION_FAILED", "required_header"},
	scopeTooNarrow:   {http.StatusForbidden, "AUTHORISATION_FAILED", "scope"},
	storeUnavailable: {http.StatusServiceUnavailable, "", "store_unavailable"},
}

func (o outcome) info() outcomeInfo { return outcomes[o] }

// verdict is the result of authenticating one request.
type verdict struct {
	outcome outcome
	// detailArg completes the detail text: an IP, a header name or a method.
	detailArg string
	// username is the Basic username, if the request carried one.
	username string
	// token is the token the secret matched, once check 4 found one.
	token *tokenstore.Token
	// user is the token owner's record, if listed.
	user *tokenstore.User
}

// detail is the exact text of SPEC §4 for the verdict's outcome.
func (v verdict) detail() string {
	switch v.outcome {
	case noCredentials:
		return "No valid bearer- or basic auth header present"
	case ipBanned:
		return "Too many failed authentication attempts from IP address " + v.detailArg
	case captchaRequired:
		return "For security reasons you must answer a CAPTCHA question."
	case invalidToken:
		return "Token is invalid, has been revoked or expired"
	case notPermitted:
		return "You are not permitted to use API tokens"
	case ipNotPermitted:
		return "IP address " + v.detailArg + " not permitted"
	case headerMismatch:
		return "Required request header " + v.detailArg + " is missing or has the wrong value"
	case scopeTooNarrow:
		return "The token scope is read-only and only covers GET, HEAD and OPTIONS requests. Request method type was " + v.detailArg + "."
	case storeUnavailable:
		return "Token store unavailable"
	}
	return ""
}

// credentials are what a well-formed Authorization header carries.
type credentials struct {
	basic    bool
	username string // Basic only
	secret   string
}

// parseAuthorization reads `Basic base64(user:token)` or `Bearer token`.
// The scheme is case-insensitive (RFC 9110). It reports false for anything
// else, including an empty token.
func parseAuthorization(header string) (credentials, bool) {
	scheme, rest, ok := strings.Cut(header, " ")
	if !ok {
		return credentials{}, false
	}
	rest = strings.TrimSpace(rest)
	switch {
	case strings.EqualFold(scheme, "Bearer"):
		if rest == "" || strings.ContainsAny(rest, " \t") {
			return credentials{}, false
		}
		return credentials{secret: rest}, true
	case strings.EqualFold(scheme, "Basic"):
		decoded, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return credentials{}, false
		}
		username, secret, ok := strings.Cut(string(decoded), ":")
		if !ok || secret == "" {
			return credentials{}, false
		}
		return credentials{basic: true, username: username, secret: secret}, true
	}
	return credentials{}, false
}

// authenticate runs the checks of SPEC §4 in order. It reads the store
// only through its in-memory or cached look-ups.
func (h *Handler) authenticate(r *http.Request, clientIP netip.Addr) verdict {
	authz := r.Header.Values("Authorization")
	if len(authz) != 1 {
		return verdict{outcome: noCredentials}
	}
	cred, ok := parseAuthorization(authz[0])
	if !ok {
		return verdict{outcome: noCredentials}
	}
	v := verdict{username: cred.username}

	// Check 4. A secret with our prefix but a wrong checksum is a typo or a
	// guess: reject it without asking the store.
	if !tokenstore.PlausibleSecret(cred.secret, h.TokenPrefix) {
		v.outcome = invalidToken
		return v
	}
	// Tokens are found by the SHA-256 of the secret, never by comparing
	// secrets: how long a look-up takes can only tell an attacker about
	// hashes of their own guesses, not about any stored secret.
	token, err := h.store.LookupToken(r.Context(), tokenstore.DigestOf(cred.secret))
	if err != nil {
		v.outcome = lookupFailure(err)
		return v
	}
	if !token.Usable(h.now()) || (cred.basic && !sameString(cred.username, token.User)) {
		v.outcome = invalidToken
		return v
	}
	v.token = token

	// Check 5.
	v.user, err = h.store.LookupUser(r.Context(), token.User)
	if err != nil {
		v.outcome = lookupFailure(err)
		return v
	}
	if v.user != nil && v.user.Disabled ||
		len(h.AllowGroups) > 0 && (v.user == nil || !v.user.InAnyGroup(h.AllowGroups)) {
		v.outcome = notPermitted
		return v
	}

	// Check 6.
	if !tokenstore.PrefixesContain(h.allowIPs, clientIP) || !token.AllowsIP(clientIP) {
		v.outcome, v.detailArg = ipNotPermitted, clientIP.String()
		return v
	}

	// Check 7. Required header values may be shared secrets of their own,
	// so they are compared in constant time.
	for _, name := range token.RequiredHeaderNames() {
		if !sameString(r.Header.Get(name), token.RequiredHeaders[name]) {
			v.outcome, v.detailArg = headerMismatch, name
			return v
		}
	}

	// Check 8.
	if !token.Scope.Covers(r.Method) {
		v.outcome, v.detailArg = scopeTooNarrow, r.Method
		return v
	}
	v.outcome = authenticated
	return v
}

// lookupFailure maps a store error: "not found" is a bad token, anything
// else means the store could not answer, and the request fails closed.
func lookupFailure(err error) outcome {
	if errors.Is(err, tokenstore.ErrNotFound) {
		return invalidToken
	}
	return storeUnavailable
}

// sameString compares in constant time (for strings of equal length).
func sameString(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// clientIP returns Caddy's idea of the client address, which honours the
// server's trusted_proxies. An unparsable address is returned invalid,
// which no allowlist contains.
func clientIP(r *http.Request) netip.Addr {
	s, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}
