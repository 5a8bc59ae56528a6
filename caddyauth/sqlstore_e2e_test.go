package caddyauth

import (
	"context"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/captcha"
	"github.com/caddy-apitoken/caddy-apitoken/internal/testdb"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// TestSQLStoresEndToEnd runs the handler on the SQLite and PostgreSQL
// stores in the in-process Caddy. Tokens are made and revoked through a
// second connection to the same database, as another server or the CLI
// would: the handler sees them within SPEC §8's deadlines.
func TestSQLStoresEndToEnd(t *testing.T) {
	dir := t.TempDir()
	stores := []struct {
		name, directive string
		open            func(realm string) (tokenstore.Store, error)
		propagation     time.Duration // SPEC §8: how soon another server's change applies
	}{
		{"sqlite", "sqlite " + filepath.Join(dir, "tokens.db"), func(realm string) (tokenstore.Store, error) {
			return tokenstore.OpenSQLite(filepath.Join(dir, "tokens.db"), realm, nil)
		}, 2 * time.Second},
		{"postgres", "postgres " + testdb.FreshPostgresDatabase(t), nil, time.Second},
	}
	stores[1].open = func(realm string) (tokenstore.Store, error) {
		return tokenstore.OpenPostgres(stores[1].directive[len("postgres "):], realm, nil)
	}
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			realm := "sql-" + st.name
			tester := startCaddy(t, `
{
	admin localhost:2999
	http_port 9080
	storage file_system `+filepath.Join(dir, st.name+"-storage")+`
}
http://localhost:9080 {
	api_token_auth {
		realm `+realm+`
		store `+st.directive+`
	}
	respond "hello {http.auth.user.id}"
}
`)
			other, err := st.open(realm)
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			ctx := context.Background()
			tok, secret, err := tokenstore.NewToken(tokenstore.TokenRequest{User: "alice"}, tokenstore.DefaultPrefix, time.Now(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := other.CreateToken(ctx, tok); err != nil {
				t.Fatal(err)
			}
			if resp, body := call(t, tester, "GET", "/", "Bearer "+secret, nil); resp.StatusCode != 200 || body != "hello alice" {
				t.Fatalf("token from the database: %d %s", resp.StatusCode, body)
			}
			// The second use is answered by the cache, and /metrics says so.
			call(t, tester, "GET", "/", "Bearer "+secret, nil)
			_, metrics := call(t, tester, "GET", "http://localhost:2999/metrics", "", nil)
			hit := regexp.MustCompile(`caddy_api_token_auth_store_cache_lookups_total\{realm="` + realm + `",result="hit"\} ([1-9][0-9]*)`)
			if !hit.MatchString(metrics) {
				t.Errorf("/metrics shows no cache hit for realm %s", realm)
			}
			// An SQL store's look-ups are timed (the file store's are not).
			timed := regexp.MustCompile(`caddy_api_token_auth_store_operation_duration_seconds_count\{operation="lookup_token",realm="` + realm + `",store="[a-z]+"\} 2`)
			if !timed.MatchString(metrics) {
				t.Errorf("/metrics does not time realm %s's two token look-ups", realm)
			}
			// Another realm in the same database does not see it.
			if elsewhere, err := st.open("another"); err != nil {
				t.Fatal(err)
			} else {
				if _, err := elsewhere.GetToken(ctx, tok.ID); err == nil {
					t.Error("realm another sees realm " + realm + "'s token")
				}
				elsewhere.Close()
			}
			if _, err := other.RevokeToken(ctx, tok.ID, time.Now()); err != nil {
				t.Fatal(err)
			}
			// The handler's store caches look-ups; another server's
			// revocation reaches it within 1 s (PostgreSQL's NOTIFY) or
			// 2 s (SQLite's data_version watch), SPEC §8.
			deadline := time.Now().Add(st.propagation)
			for {
				resp, _ := call(t, tester, "GET", "/", "Bearer "+secret, nil)
				if resp.StatusCode == 401 {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("revoked token: %d %s after the revocation, want 401", resp.StatusCode, st.propagation)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}

			// Lockout state is kept in the database (SPEC §7): bad Basic
			// attempts challenge alice, in a row another server reads,
			// and that server's clear lifts the challenge here.
			lockouts := other.(tokenstore.LockoutStore)
			for range captcha.DefaultMaxFailures {
				call(t, tester, "GET", "/", basicAuth("alice", "wrong"), nil)
			}
			if resp, _ := call(t, tester, "GET", "/", basicAuth("alice", "wrong"), nil); resp.StatusCode != 403 {
				t.Errorf("after %d failures: %d, want 403 (challenged)", captcha.DefaultMaxFailures, resp.StatusCode)
			}
			recs, err := lockouts.ListLockouts(ctx)
			if err != nil || len(recs) != 1 || recs[0].Kind != tokenstore.LockoutChallenge || recs[0].User != "alice" {
				t.Fatalf("lockouts in the database: %+v, %v; want alice's challenge", recs, err)
			}
			if err := lockouts.DeleteUserLockouts(ctx, "alice"); err != nil {
				t.Fatal(err)
			}
			deadline = time.Now().Add(st.propagation)
			for {
				resp, _ := call(t, tester, "GET", "/", basicAuth("alice", "wrong"), nil)
				if resp.StatusCode == 401 {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("challenge cleared by another server: %d %s after, want 401", resp.StatusCode, st.propagation)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}
