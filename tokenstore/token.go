package tokenstore

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Scope says which request methods a token may be used for.
type Scope string

const (
	// ScopeReadOnly covers GET, HEAD and OPTIONS.
	ScopeReadOnly Scope = "read-only"
	// ScopeReadWrite covers every method.
	ScopeReadWrite Scope = "read-write"
)

// ParseScope accepts "read-only" or "read-write".
func ParseScope(s string) (Scope, error) {
	switch Scope(s) {
	case ScopeReadOnly, ScopeReadWrite:
		return Scope(s), nil
	}
	return "", fmt.Errorf("unknown scope %q (want %q or %q)", s, ScopeReadOnly, ScopeReadWrite)
}

// Covers reports whether the scope allows a request with method.
func (s Scope) Covers(method string) bool {
	if s == ScopeReadWrite {
		return true
	}
	return method == http.MethodGet || method == http.MethodHead || method == http.MethodOptions
}

// MaxLastIPs is how many distinct recent client IPs a token remembers.
const MaxLastIPs = 5

// Token is one personal API token's record. It never holds the secret:
// only Hash, the secret's "sha256:<hex>", or for a credential imported from
// another system, its bcrypt or argon2id hash.
type Token struct {
	// ID identifies the token publicly; safe to log and show.
	ID string `json:"id"`
	// User owns the token. With Basic authentication the username must be this.
	User string `json:"user"`
	// Name is the owner's label for the token.
	Name string `json:"name,omitempty"`
	// Scope is read-only (GET, HEAD, OPTIONS) or read-write (every method).
	Scope Scope `json:"scope"`
	// Hash is "sha256:<hex>" of the secret. Credentials imported from
	// other systems may instead carry a slow password hash as `caddy
	// hash-password` prints it, behind its scheme: "bcrypt:$2a$14$…" or
	// "argon2id:$argon2id$v=19$m=…,t=…,p=…$<salt>$<key>". Those work
	// with Basic authentication only, where the username narrows the
	// candidates (see SlowVerifier).
	Hash string `json:"hash"`
	// Created is when the token was made.
	Created time.Time `json:"created"`
	// Expires is when the token stops working; nil for never.
	Expires *time.Time `json:"expires,omitempty"`
	// Revoked is when the token was revoked; nil while it is not.
	Revoked *time.Time `json:"revoked,omitempty"`
	// AllowedIPs limits the client addresses (CIDRs or single IPs) that
	// may use the token; empty means any.
	AllowedIPs []string `json:"allowed_ips,omitempty"`
	// RequiredHeaders maps header names to the values that every request
	// with this token must carry.
	RequiredHeaders map[string]string `json:"required_headers,omitempty"`
	// LastUsed is the last time the token authenticated a request.
	LastUsed *time.Time `json:"last_used,omitempty"`
	// LastIPs are the most recent distinct client IPs, newest first.
	LastIPs []string `json:"last_ips,omitempty"`

	digest              Digest // zero for a slow hash
	kind                hashKind
	allowedIPs          []netip.Prefix
	requiredHeaderNames []string
}

// Prepare checks the record and computes what the request path needs
// (the hash digest, the parsed IP prefixes). Stores call it on every
// token they load, so a bad record is refused when it is read, not when
// a request trips over it.
func (t *Token) Prepare() error {
	if t.ID == "" {
		return fmt.Errorf("token has no id")
	}
	if t.User == "" {
		return fmt.Errorf("token %s: user is empty", t.ID)
	}
	if _, err := ParseScope(string(t.Scope)); err != nil {
		return fmt.Errorf("token %s: scope: %v", t.ID, err)
	}
	d, kind, err := parseStoredHash(t.Hash)
	if err != nil {
		return fmt.Errorf("token %s: hash: %v", t.ID, err)
	}
	t.digest, t.kind = d, kind
	t.allowedIPs, err = ParsePrefixes(t.AllowedIPs)
	if err != nil {
		return fmt.Errorf("token %s: allowed_ips: %v", t.ID, err)
	}
	t.requiredHeaderNames = nil
	for name := range t.RequiredHeaders {
		if name == "" || strings.ContainsAny(name, " \t\r\n:") {
			return fmt.Errorf("token %s: required_headers: invalid header name %q", t.ID, name)
		}
		t.requiredHeaderNames = append(t.requiredHeaderNames, name)
	}
	slices.Sort(t.requiredHeaderNames)
	return nil
}

// RequiredHeaderNames returns the names of RequiredHeaders, sorted, so that
// the first missing header reported is the same on every request.
func (t *Token) RequiredHeaderNames() []string { return t.requiredHeaderNames }

// Digest returns the SHA-256 the token is indexed by (after Prepare); the
// zero Digest for a slow hash, which cannot be indexed.
func (t *Token) Digest() Digest { return t.digest }

// SlowHash reports whether the token's stored hash is a slow password hash
// (bcrypt or argon2id) rather than sha256: an imported credential, usable
// with Basic authentication only and checked with SlowVerifier. It reads
// Hash, so it needs no Prepare.
func (t *Token) SlowHash() bool {
	_, _, slow := splitSlowHash(t.Hash)
	return slow
}

// clone returns a deep copy of t: nothing in it shares memory with t, so
// a caller may change it freely.
func (t *Token) clone() Token {
	c := *t
	c.Expires = clonePtr(t.Expires)
	c.Revoked = clonePtr(t.Revoked)
	c.LastUsed = clonePtr(t.LastUsed)
	c.AllowedIPs = slices.Clone(t.AllowedIPs)
	c.LastIPs = slices.Clone(t.LastIPs)
	c.RequiredHeaders = maps.Clone(t.RequiredHeaders)
	c.allowedIPs = slices.Clone(t.allowedIPs)
	c.requiredHeaderNames = slices.Clone(t.requiredHeaderNames)
	return c
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// Usable reports whether the token is neither revoked nor expired at now.
func (t *Token) Usable(now time.Time) bool {
	if t.Revoked != nil && !t.Revoked.After(now) {
		return false
	}
	return t.Expires == nil || now.Before(*t.Expires)
}

// AllowsIP reports whether ip is within the token's allowed_ips.
func (t *Token) AllowsIP(ip netip.Addr) bool {
	return PrefixesContain(t.allowedIPs, ip)
}

// Status is "revoked", "expired" or "active" at now.
func (t *Token) Status(now time.Time) string {
	switch {
	case t.Revoked != nil && !t.Revoked.After(now):
		return "revoked"
	case t.Expires != nil && !now.Before(*t.Expires):
		return "expired"
	}
	return "active"
}

// User is a token owner's record. A token's user need not have one.
type User struct {
	// Groups the user belongs to, checked against allow_groups.
	Groups []string `json:"groups,omitempty"`
	// Disabled users cannot use any of their tokens.
	Disabled bool `json:"disabled,omitempty"`

	joinedGroups string
}

// Prepare computes the comma-separated group list once, so that setting
// the {http.auth.user.groups} placeholder costs nothing per request.
func (u *User) Prepare() {
	u.joinedGroups = strings.Join(u.Groups, ",")
}

// clone returns a deep copy of u.
func (u *User) clone() User {
	c := *u
	c.Groups = slices.Clone(u.Groups)
	return c
}

// JoinedGroups returns the groups separated by commas.
func (u *User) JoinedGroups() string { return u.joinedGroups }

// InAnyGroup reports whether the user is in at least one of groups.
func (u *User) InAnyGroup(groups []string) bool {
	for _, want := range groups {
		for _, have := range u.Groups {
			if want == have {
				return true
			}
		}
	}
	return false
}

// ErrInvalid is wrapped by the errors of management methods (CreateToken,
// RotateToken, PutUser) that refuse their input, as opposed to failing to
// store it. Their messages name the field at fault.
var ErrInvalid = errors.New("invalid input")

// invalidError is a refusal of input: its message is the text, and it
// matches ErrInvalid.
type invalidError struct{ err error }

func (e invalidError) Error() string        { return e.err.Error() }
func (e invalidError) Unwrap() []error      { return []error{e.err, ErrInvalid} }
func invalid(format string, a ...any) error { return invalidError{fmt.Errorf(format, a...)} }

// ValidateUser checks a user record given to a store: the name must be
// non-empty valid UTF-8 without control characters (it appears in logs,
// the {http.auth.user.id} placeholder and Basic credentials, which cannot
// carry them), and every group a non-empty string without control
// characters. Errors name the field, and match ErrInvalid.
func ValidateUser(name string, u User) error {
	if err := checkText(name); err != nil {
		return invalid("user name: %v", err)
	}
	for i, g := range u.Groups {
		if err := checkText(g); err != nil {
			return invalid("groups[%d]: %v", i, err)
		}
	}
	return nil
}

func checkText(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not valid UTF-8", s)
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return fmt.Errorf("%q contains a control character", s)
	}
	return nil
}

// Settings are the run-time settings kept in the store, so that every
// server sharing the store obeys them.
type Settings struct {
	// TestEndpointEnabled turns the test endpoint off when false.
	// Default: true.
	TestEndpointEnabled *bool `json:"test_endpoint_enabled,omitempty"`
}

// clone returns a copy of s that shares no memory with it.
func (s Settings) clone() Settings {
	s.TestEndpointEnabled = clonePtr(s.TestEndpointEnabled)
	return s
}

// TestEndpointOn reports whether the test endpoint is enabled (the default).
func (s Settings) TestEndpointOn() bool {
	return s.TestEndpointEnabled == nil || *s.TestEndpointEnabled
}

// ParsePrefixes parses CIDRs or single addresses (taken as /32 or /128).
func ParsePrefixes(list []string) ([]netip.Prefix, error) {
	if len(list) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		p, err := ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// ParsePrefix parses one CIDR or single address.
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		return unmapPrefix(p).Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid IP address or CIDR %q", s)
	}
	return unmapPrefix(netip.PrefixFrom(a, a.BitLen())), nil
}

// unmapPrefix turns an IPv4-mapped IPv6 prefix (::ffff:192.0.2.0/120) into
// its IPv4 form, because client addresses are compared unmapped.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// PrefixesContain reports whether ip is in one of prefixes; an empty list
// allows every address.
func PrefixesContain(prefixes []netip.Prefix, ip netip.Addr) bool {
	if len(prefixes) == 0 {
		return true
	}
	ip = ip.Unmap()
	for _, p := range prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
