package caddyauth

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// fixture is a store file with a known cast of users and tokens, used by
// the unit tests and the end-to-end tests alike.
type fixture struct {
	path    string
	secrets map[string]string // token name -> secret
	tokens  map[string]tokenstore.Token
}

// The cast. Every token belongs to alice unless its name says otherwise.
const (
	tokRW          = "rw"         // read-write, no limits
	tokRO          = "ro"         // read-only
	tokExpired     = "expired"    // expired an hour ago
	tokRevoked     = "revoked"    // revoked an hour ago
	tokSoon        = "soon"       // expires in 3 days
	tokIPLimited   = "ip-limited" // allowed only from 192.0.2.0/24
	tokHeaders     = "headers"    // requires X-Team: blue and X-Env: prod
	tokBob         = "bob"        // bob's; bob is disabled
	tokCarol       = "carol"      // carol's; carol is in no group
	tokImported    = "imported"   // no cat_ prefix: imported from elsewhere
	fixtureTeamHdr = "X-Team"
)

func newFixture(t testing.TB, now time.Time) *fixture {
	t.Helper()
	f := &fixture{
		path:    filepath.Join(t.TempDir(), "tokens.json"),
		secrets: map[string]string{},
		tokens:  map[string]tokenstore.Token{},
	}
	hourAgo, soon := now.Add(-time.Hour), now.Add(72*time.Hour)
	add := func(name, user string, scope tokenstore.Scope, mod func(*tokenstore.Token)) {
		tok, secret, err := tokenstore.NewToken(tokenstore.TokenRequest{User: user, Name: name, Scope: scope},
			tokenstore.DefaultPrefix, now.Add(-48*time.Hour), 0)
		if err != nil {
			t.Fatal(err)
		}
		if mod != nil {
			mod(&tok)
		}
		f.secrets[name], f.tokens[name] = secret, tok
	}
	add(tokRW, "alice", tokenstore.ScopeReadWrite, nil)
	add(tokRO, "alice", tokenstore.ScopeReadOnly, nil)
	add(tokExpired, "alice", tokenstore.ScopeReadWrite, func(t *tokenstore.Token) { t.Expires = &hourAgo })
	add(tokRevoked, "alice", tokenstore.ScopeReadWrite, func(t *tokenstore.Token) { t.Revoked = &hourAgo })
	add(tokSoon, "alice", tokenstore.ScopeReadWrite, func(t *tokenstore.Token) { t.Expires = &soon })
	add(tokIPLimited, "alice", tokenstore.ScopeReadWrite, func(t *tokenstore.Token) { t.AllowedIPs = []string{"192.0.2.0/24"} })
	add(tokHeaders, "alice", tokenstore.ScopeReadWrite, func(t *tokenstore.Token) {
		t.RequiredHeaders = map[string]string{fixtureTeamHdr: "blue", "X-Env": "prod"}
	})
	add(tokBob, "bob", tokenstore.ScopeReadWrite, nil)
	add(tokCarol, "carol", tokenstore.ScopeReadWrite, nil)
	add(tokImported, "alice", tokenstore.ScopeReadWrite, func(t *tokenstore.Token) {
		const legacy = "legacy-secret-from-another-system"
		t.Hash = tokenstore.HashSecret(legacy)
		f.secrets[tokImported] = legacy
	})
	f.secrets[tokImported] = "legacy-secret-from-another-system"

	users := map[string]tokenstore.User{
		"alice": {Groups: []string{"developers", "ops"}},
		"bob":   {Groups: []string{"developers"}, Disabled: true},
		"carol": {},
	}
	list := make([]tokenstore.Token, 0, len(f.tokens))
	for _, tok := range f.tokens {
		list = append(list, tok)
	}
	f.write(t, map[string]any{"version": 1, "users": users, "tokens": list})
	return f
}

func (f *fixture) write(t testing.TB, doc any) {
	t.Helper()
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
