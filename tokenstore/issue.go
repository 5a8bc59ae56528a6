package tokenstore

import (
	"fmt"
	"time"
)

// TokenRequest describes a token to create.
type TokenRequest struct {
	User            string
	Name            string
	Scope           Scope // default read-write
	Expires         *time.Time
	AllowedIPs      []string
	RequiredHeaders map[string]string
}

// NewToken makes a token from req: a fresh secret with prefix, its hash,
// and an id. The secret is returned only here; the token keeps its hash.
// With maxLifetime > 0, a request without an expiry gets now+maxLifetime
// and one beyond it is refused. Errors name the field at fault.
func NewToken(req TokenRequest, prefix string, now time.Time, maxLifetime time.Duration) (Token, string, error) {
	if req.User == "" {
		return Token{}, "", fmt.Errorf("user: required")
	}
	// Names end up in logs, placeholders and Basic credentials, and
	// PostgreSQL refuses a NUL byte: what one store takes, every store
	// and every consumer must take too.
	if err := checkText(req.User); err != nil {
		return Token{}, "", fmt.Errorf("user: %v", err)
	}
	if req.Name != "" {
		if err := checkText(req.Name); err != nil {
			return Token{}, "", fmt.Errorf("name: %v", err)
		}
	}
	scope := req.Scope
	if scope == "" {
		scope = ScopeReadWrite
	}
	if _, err := ParseScope(string(scope)); err != nil {
		return Token{}, "", fmt.Errorf("scope: %v", err)
	}
	expires, err := capExpiry(req.Expires, now, maxLifetime)
	if err != nil {
		return Token{}, "", err
	}
	if _, err := ParsePrefixes(req.AllowedIPs); err != nil {
		return Token{}, "", fmt.Errorf("allowed_ips: %v", err)
	}
	id, err := NewID()
	if err != nil {
		return Token{}, "", err
	}
	secret, err := GenerateSecret(prefix)
	if err != nil {
		return Token{}, "", err
	}
	t := Token{
		ID:              id,
		User:            req.User,
		Name:            req.Name,
		Scope:           scope,
		Hash:            HashSecret(secret),
		Created:         now.UTC().Truncate(time.Second),
		Expires:         expires,
		AllowedIPs:      req.AllowedIPs,
		RequiredHeaders: req.RequiredHeaders,
	}
	if err := t.Prepare(); err != nil {
		return Token{}, "", err
	}
	return t, secret, nil
}

// capExpiry applies max_lifetime (when > 0) to a requested expiry.
func capExpiry(requested *time.Time, now time.Time, maxLifetime time.Duration) (*time.Time, error) {
	// Expiries are kept to the second, so one must be a second away to be
	// in the future once truncated.
	if requested != nil && !requested.Truncate(time.Second).After(now) {
		return nil, fmt.Errorf("expires: %s is not in the future", requested.Format(time.RFC3339))
	}
	if maxLifetime <= 0 {
		if requested == nil {
			return nil, nil
		}
		at := requested.UTC().Truncate(time.Second)
		return &at, nil
	}
	limit := now.Add(maxLifetime)
	if requested == nil {
		at := limit.UTC().Truncate(time.Second)
		return &at, nil
	}
	if requested.After(limit) {
		return nil, fmt.Errorf("expires: %s is beyond max_lifetime (%s, i.e. %s at the latest)",
			requested.Format(time.RFC3339), maxLifetime, limit.UTC().Format(time.RFC3339))
	}
	at := requested.UTC().Truncate(time.Second)
	return &at, nil
}
