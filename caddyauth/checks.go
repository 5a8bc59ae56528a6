package caddyauth

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"time"

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
	// basic is whether the credentials came as Basic authentication.
	basic bool
	// retryAfter is how long an IP ban has to run.
	retryAfter time.Duration
	// token is the token the secret matched, once check 4 found one.
	token *tokenstore.Token
	// user is the token owner's record, if listed.
	user *tokenstore.User
	// at is when the request was judged: one clock reading serves every
	// check and the record of the use.
	at time.Time
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
		decoded, ok := decodeBase64(rest)
		if !ok {
			return credentials{}, false
		}
		username, secret, ok := strings.Cut(decoded, ":")
		if !ok || secret == "" {
			return credentials{}, false
		}
		return credentials{basic: true, username: username, secret: secret}, true
	}
	return credentials{}, false
}

// decodeBase64 decodes standard base64 into a string with one allocation:
// a Basic header's user:token fits the stack buffer, where DecodeString
// and a conversion would cost two.
func decodeBase64(s string) (string, bool) {
	var buf [128]byte
	if base64.StdEncoding.DecodedLen(len(s)) > len(buf) {
		b, err := base64.StdEncoding.DecodeString(s)
		return string(b), err == nil
	}
	n, err := base64.StdEncoding.Decode(buf[:], []byte(s))
	return string(buf[:n]), err == nil
}

// authenticate runs the checks of SPEC §4 in order, and has the lockout
// count the result.
func (h *Handler) authenticate(r *http.Request, clientIP netip.Addr) verdict {
	v := h.settle(h.check(r, clientIP, h.now()), clientIP)
	h.metrics.results[v.outcome].Inc()
	return v
}

// check runs the checks of SPEC §4 in order, as at now. It reads the
// store only through its in-memory or cached look-ups, and the lockout
// only from memory.
func (h *Handler) check(r *http.Request, clientIP netip.Addr, now time.Time) verdict {
	authz := r.Header.Values("Authorization")
	if len(authz) != 1 {
		return verdict{outcome: noCredentials, at: now}
	}
	cred, ok := parseAuthorization(authz[0])
	if !ok {
		return verdict{outcome: noCredentials, at: now}
	}
	v := verdict{username: cred.username, basic: cred.basic, at: now}

	// Check 2: a banned address is answered from memory, before anything
	// else is looked at.
	if until, banned := h.lockout.Banned(clientIP); banned {
		v.outcome, v.detailArg, v.retryAfter = ipBanned, clientIP.String(), until.Sub(now)
		return v
	}
	// Check 3: a Bearer request names no user, so only Basic can be held
	// by a challenge.
	if cred.basic && h.lockout.Challenged(cred.username, clientIP) {
		v.outcome = captchaRequired
		return v
	}

	// Check 4.
	token, outcome := h.findToken(r.Context(), cred.secret, now)
	switch {
	case outcome == authenticated && cred.basic && !sameString(cred.username, token.User):
		outcome = invalidToken
	case outcome == invalidToken && cred.basic:
		token, outcome = h.findImported(r.Context(), cred.username, cred.secret, now)
	}
	if outcome != authenticated {
		v.outcome = outcome
		return v
	}
	v.token = token

	// Check 5.
	start := h.metrics.start()
	user, err := h.store.LookupUser(r.Context(), token.User)
	h.metrics.observe(h.metrics.lookupUser, start)
	v.user = user
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

// findToken finds the usable token whose secret this is (check 4, but
// for the owner). A secret with our prefix and a wrong checksum is a typo
// or a guess: it is refused without asking the store.
func (h *Handler) findToken(ctx context.Context, secret string, now time.Time) (*tokenstore.Token, outcome) {
	if !tokenstore.PlausibleSecret(secret, h.TokenPrefix) {
		return nil, invalidToken
	}
	// Tokens are found by the SHA-256 of the secret, never by comparing
	// secrets: how long a look-up takes can only tell an attacker about
	// hashes of their own guesses, not about any stored secret.
	start := h.metrics.start()
	token, err := h.store.LookupToken(ctx, tokenstore.DigestOf(secret))
	h.metrics.observe(h.metrics.lookupToken, start)
	if err != nil {
		return nil, lookupFailure(err)
	}
	if !token.Usable(now) {
		return nil, invalidToken
	}
	return token, authenticated
}

// findImported looks for an imported credential with a slow password hash
// (bcrypt, argon2id) among the user's: Basic only, where the username
// narrows the candidates. A verified secret is cached, so the slow hash is
// paid once. When the user has no such credential, one slow comparison
// is spent on a hash of the realm with its most common parameters, so
// that timing does not tell which users have one; a realm without any
// slow hash has nothing to hide and pays nothing.
func (h *Handler) findImported(ctx context.Context, user, secret string, now time.Time) (*tokenstore.Token, outcome) {
	start := h.metrics.start()
	candidates, err := h.store.LookupBasic(ctx, user)
	h.metrics.observe(h.metrics.lookupBasic, start)
	if err != nil {
		return nil, lookupFailure(err)
	}
	if len(candidates) == 0 {
		model, err := h.store.SlowHashModel(ctx)
		if err != nil {
			return nil, lookupFailure(err)
		}
		if model != "" {
			h.slow.FakeVerify(model, secret)
		}
		return nil, invalidToken
	}
	for _, t := range candidates {
		if h.slow.Verify(t, secret) {
			if !t.Usable(now) {
				return nil, invalidToken
			}
			return t, authenticated
		}
	}
	return nil, invalidToken
}

// checkOwnedToken reports whether secret is a usable token of user: what
// the unlock page asks before it clears a challenge.
func (h *Handler) checkOwnedToken(ctx context.Context, user, secret string) (bool, error) {
	now := h.now()
	token, outcome := h.findToken(ctx, secret, now)
	if outcome == invalidToken {
		token, outcome = h.findImported(ctx, user, secret, now)
	}
	switch outcome {
	case authenticated:
		return sameString(user, token.User), nil
	case storeUnavailable:
		return false, tokenstore.ErrUnavailable
	}
	return false, nil
}

// settle has the lockout count a judged attempt (SPEC §7). Counting and
// the challenge are one atomic step: an attempt judged while a challenge
// started is refused as challenged, so that exactly max_failures attempts
// are judged. Only a failure of check 4 counts; a success resets the
// user's count.
func (h *Handler) settle(v verdict, ip netip.Addr) verdict {
	switch {
	case v.outcome == invalidToken:
		user := ""
		if v.basic {
			user = v.username
		}
		if h.lockout.Fail(user, ip) {
			v.outcome, v.token = captchaRequired, nil
		}
	case v.basic && v.outcome == authenticated:
		if h.lockout.Succeed(v.username, ip) {
			v.outcome = captchaRequired
		}
	case v.basic && v.token != nil:
		// A valid token refused by checks 5-8: the challenge comes first.
		if h.lockout.Challenged(v.username, ip) {
			v.outcome = captchaRequired
		}
	}
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
