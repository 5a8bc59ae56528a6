package tokenstore

import (
	"strings"
	"testing"
	"time"
)

func TestNewTokenDefaults(t *testing.T) {
	t.Parallel()
	zone := time.FixedZone("UTC+2", 2*3600)
	now := time.Date(2025, 6, 1, 14, 30, 15, 987654321, zone)
	req := TokenRequest{
		User:            "alice",
		Name:            "laptop",
		AllowedIPs:      []string{"10.0.0.0/8", "192.0.2.7"},
		RequiredHeaders: map[string]string{"X-Team": "blue", "Accept": "json"},
	}
	tok, secret, err := NewToken(req, DefaultPrefix, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Scope != ScopeReadWrite {
		t.Errorf("Scope = %q, want the default %q", tok.Scope, ScopeReadWrite)
	}
	if tok.Expires != nil {
		t.Errorf("Expires = %v, want none without max_lifetime", tok.Expires)
	}
	if tok.Revoked != nil || tok.LastUsed != nil || tok.LastIPs != nil {
		t.Errorf("a new token has revoked/last_used/last_ips set: %+v", tok)
	}
	wantCreated := time.Date(2025, 6, 1, 12, 30, 15, 0, time.UTC)
	if !tok.Created.Equal(wantCreated) || tok.Created.Location() != time.UTC {
		t.Errorf("Created = %v, want %v (UTC, whole seconds)", tok.Created, wantCreated)
	}
	if tok.User != "alice" || tok.Name != "laptop" {
		t.Errorf("User, Name = %q, %q; want alice, laptop", tok.User, tok.Name)
	}
	if len(tok.ID) != 16 || strings.Trim(tok.ID, base62Alphabet) != "" {
		t.Errorf("ID = %q, want 16 base62 characters", tok.ID)
	}
	if !strings.HasPrefix(secret, DefaultPrefix) || !PlausibleSecret(secret, DefaultPrefix) {
		t.Errorf("secret %q is not a well-formed %q token", secret, DefaultPrefix)
	}
	if tok.Hash != HashSecret(secret) {
		t.Errorf("Hash = %q, want HashSecret(secret) = %q", tok.Hash, HashSecret(secret))
	}
	if tok.Digest() != DigestOf(secret) {
		t.Error("Digest() does not match the secret: the token was not prepared")
	}
	if got := tok.RequiredHeaderNames(); len(got) != 2 || got[0] != "Accept" || got[1] != "X-Team" {
		t.Errorf("RequiredHeaderNames() = %q, want [Accept X-Team]", got)
	}
	if len(tok.AllowedIPs) != 2 {
		t.Errorf("AllowedIPs = %q, want the requested two", tok.AllowedIPs)
	}
}

func TestNewTokenScopesAndPrefixes(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for _, prefix := range []string{DefaultPrefix, "acme_", ""} {
		for _, scope := range []Scope{ScopeReadOnly, ScopeReadWrite} {
			tok, secret, err := NewToken(TokenRequest{User: "bob", Scope: scope}, prefix, now, 0)
			if err != nil {
				t.Fatalf("prefix %q scope %q: %v", prefix, scope, err)
			}
			if tok.Scope != scope {
				t.Errorf("Scope = %q, want %q", tok.Scope, scope)
			}
			if len(secret) != len(prefix)+randomLength+checksumLength || !strings.HasPrefix(secret, prefix) {
				t.Errorf("secret %q does not have the prefix %q and 38 characters after it", secret, prefix)
			}
		}
	}
}

func TestNewTokenUnique(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ids := make(map[string]bool)
	secrets := make(map[string]bool)
	for i := 0; i < 100; i++ {
		tok, secret, err := NewToken(TokenRequest{User: "alice"}, DefaultPrefix, now, 0)
		if err != nil {
			t.Fatal(err)
		}
		if ids[tok.ID] || secrets[secret] {
			t.Fatalf("repeated id %q or secret after %d tokens", tok.ID, i)
		}
		ids[tok.ID], secrets[secret] = true, true
	}
}

func TestNewTokenExpiry(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 750_000_000, time.UTC) // 12:00:00.75
	zone := time.FixedZone("UTC-5", -5*3600)
	at := func(d time.Duration) *time.Time { v := now.Add(d); return &v }
	day := 24 * time.Hour
	tests := []struct {
		name        string
		requested   *time.Time
		maxLifetime time.Duration
		want        *time.Time // nil: no expiry
		wantErr     string     // error prefix
	}{
		{"no expiry, no max_lifetime", nil, 0, nil, ""},
		{"negative max_lifetime is none", nil, -time.Hour, nil, ""},
		{"expiry, no max_lifetime", at(365 * day), 0, ptr(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)), ""},
		{"expiry in another zone is stored in UTC", ptr(time.Date(2025, 6, 2, 7, 0, 0, 0, zone)), 0, ptr(time.Date(2025, 6, 2, 12, 0, 0, 0, time.UTC)), ""},

		{"no expiry gets now+max_lifetime, whole seconds", nil, 30 * day, ptr(time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC)), ""},
		{"no expiry, max_lifetime of 90 minutes", nil, 90 * time.Minute, ptr(time.Date(2025, 6, 1, 13, 30, 0, 0, time.UTC)), ""},
		{"within max_lifetime", at(7 * day), 30 * day, ptr(time.Date(2025, 6, 8, 12, 0, 0, 0, time.UTC)), ""},
		{"exactly at max_lifetime", at(30 * day), 30 * day, ptr(time.Date(2025, 7, 1, 12, 0, 0, 0, time.UTC)), ""},
		{"a nanosecond beyond max_lifetime", at(30*day + time.Nanosecond), 30 * day, nil, "expires:"},
		{"far beyond max_lifetime", at(3650 * day), 30 * day, nil, "expires:"},

		{"expiry exactly now", at(0), 0, nil, "expires:"},
		{"expiry gone once kept to the second", at(200 * time.Millisecond), 0, nil, "expires:"},
		{"expiry in the past", at(-time.Hour), 0, nil, "expires:"},
		{"expiry in the past with max_lifetime", at(-time.Hour), 30 * day, nil, "expires:"},
		{"expiry in the past in another zone", ptr(now.Add(-time.Second).In(zone)), 0, nil, "expires:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok, secret, err := NewToken(TokenRequest{User: "alice", Expires: tt.requested}, DefaultPrefix, now, tt.maxLifetime)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("NewToken succeeded with expires %v, want an error", tok.Expires)
				}
				if !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not start with %q", err, tt.wantErr)
				}
				if secret != "" {
					t.Error("a secret was returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tt.want == nil && tok.Expires != nil:
				t.Errorf("Expires = %v, want none", tok.Expires)
			case tt.want != nil && tok.Expires == nil:
				t.Errorf("Expires = none, want %v", tt.want)
			case tt.want != nil && (!tok.Expires.Equal(*tt.want) || tok.Expires.Location() != time.UTC):
				t.Errorf("Expires = %v, want %v in UTC", tok.Expires, tt.want)
			}
		})
	}
}

func TestNewTokenBeyondMaxLifetimeMessage(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	requested := now.Add(48 * time.Hour)
	_, _, err := NewToken(TokenRequest{User: "alice", Expires: &requested}, DefaultPrefix, now, 24*time.Hour)
	if err == nil {
		t.Fatal("NewToken accepted an expiry beyond max_lifetime")
	}
	for _, want := range []string{"expires:", "2025-06-03T12:00:00Z", "max_lifetime", "24h0m0s", "2025-06-02T12:00:00Z"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestNewTokenErrors(t *testing.T) {
	t.Parallel()
	now := time.Now()
	tests := []struct {
		name       string
		req        TokenRequest
		wantPrefix string
		wantSub    string
	}{
		{"no user", TokenRequest{}, "user:", ""},
		{"no user but everything else", TokenRequest{Name: "x", Scope: ScopeReadOnly}, "user:", ""},
		{"unknown scope", TokenRequest{User: "alice", Scope: "admin"}, "scope:", `"admin"`},
		{"upper-case scope", TokenRequest{User: "alice", Scope: "READ-ONLY"}, "scope:", ""},
		{"bad CIDR", TokenRequest{User: "alice", AllowedIPs: []string{"10.0.0.0/99"}}, "allowed_ips:", "10.0.0.0/99"},
		{"bad address", TokenRequest{User: "alice", AllowedIPs: []string{"10.0.0.1", "office"}}, "allowed_ips:", "office"},
		{"NUL in user", TokenRequest{User: "ali\x00ce"}, "user:", "control character"},
		{"newline in user", TokenRequest{User: "alice\nINFO forged log line"}, "user:", "control character"},
		{"user not UTF-8", TokenRequest{User: "al\xffice"}, "user:", "UTF-8"},
		{"NUL in name", TokenRequest{User: "alice", Name: "lap\x00top"}, "name:", "control character"},
		{"bad header name", TokenRequest{User: "alice", RequiredHeaders: map[string]string{"X Team": "a"}}, "", "required_headers:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tok, secret, err := NewToken(tt.req, DefaultPrefix, now, 0)
			if err == nil {
				t.Fatalf("NewToken succeeded (token %s), want an error", tok.ID)
			}
			if !strings.HasPrefix(err.Error(), tt.wantPrefix) {
				t.Errorf("error %q does not start with %q", err, tt.wantPrefix)
			}
			if !strings.Contains(err.Error(), tt.wantSub) {
				t.Errorf("error %q does not contain %q", err, tt.wantSub)
			}
			if secret != "" || tok.ID != "" || tok.Hash != "" {
				t.Error("a token or secret was returned with an error")
			}
		})
	}
}
