package admin

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-apitoken/caddy-apitoken/internal/testdb"
	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

// Store specs for the migrate tests, each a fresh, empty store.
func fileSpec(t *testing.T) string {
	return "file:" + filepath.Join(t.TempDir(), "tokens.json")
}

func sqliteSpec(t *testing.T) string {
	return "sqlite:" + filepath.Join(t.TempDir(), "tokens.db")
}

func postgresSpec(t *testing.T) string {
	return "postgres:" + testdb.FreshPostgresDatabase(t)
}

// postgresURLSpec is a PostgreSQL URL given alone, as --store accepts it.
func postgresURLSpec(t *testing.T) string {
	return testdb.FreshPostgresDatabase(t)
}

// openSpec opens the store spec names, for realm, and closes it after the test.
func openSpec(t *testing.T, spec, realm string) tokenstore.Store {
	t.Helper()
	cfg, err := tokenstore.ParseSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Realm = realm
	s, err := tokenstore.Open(cfg, nil)
	if err != nil {
		t.Fatalf("opening %s: %v", cfg, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// withStore runs fill on the store spec names and closes it, so that
// what fill wrote is on disk before migrate opens the store.
func withStore(t *testing.T, spec, realm string, fill func(s tokenstore.Store)) {
	t.Helper()
	cfg, err := tokenstore.ParseSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Realm = realm
	s, err := tokenstore.Open(cfg, nil)
	if err != nil {
		t.Fatalf("opening %s: %v", cfg, err)
	}
	fill(s)
	if err := s.Close(); err != nil {
		t.Fatalf("closing %s: %v", cfg, err)
	}
}

// Secrets of the seeded tokens.
const (
	activeSecret  = "cat_migrate_active_secret_0001"
	revokedSecret = "cat_migrate_revoked_secret_0002"
	legacySecret  = "legacy password"
)

// seedTokens are tokens with every field set, revoked and expired ones,
// and an imported bcrypt credential. Times have nanoseconds; 200 ns past
// the microsecond, so that PostgreSQL's rounding and truncation agree.
func seedTokens(t *testing.T) []tokenstore.Token {
	t.Helper()
	base := time.Date(2026, 3, 1, 12, 0, 0, 123456200, time.UTC)
	at := func(d time.Duration) *time.Time { v := base.Add(d); return &v }
	legacy, err := bcrypt.GenerateFromPassword([]byte(legacySecret), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return []tokenstore.Token{
		{
			ID: "tok-active", User: "alice", Name: "CI", Scope: tokenstore.ScopeReadWrite,
			Hash: tokenstore.HashSecret(activeSecret), Created: base, Expires: at(10 * 365 * 24 * time.Hour),
			AllowedIPs:      []string{"10.0.0.0/8", "2001:db8::/32"},
			RequiredHeaders: map[string]string{"X-Team": "blue", "X-Env": "prod"},
			LastUsed:        at(time.Hour), LastIPs: []string{"10.1.2.3", "2001:db8::1"},
		},
		{
			ID: "tok-revoked", User: "bob", Scope: tokenstore.ScopeReadOnly,
			Hash: tokenstore.HashSecret(revokedSecret), Created: *at(time.Minute),
			Revoked: at(2 * time.Hour), LastUsed: at(90 * time.Minute), LastIPs: []string{"192.0.2.7"},
		},
		{
			ID: "tok-expired", User: "alice", Name: "old", Scope: tokenstore.ScopeReadOnly,
			Hash: tokenstore.HashSecret("cat_migrate_expired_secret_0003"), Created: *at(2 * time.Minute),
			Expires: at(24 * time.Hour),
		},
		{
			ID: "tok-legacy", User: "carol", Scope: tokenstore.ScopeReadWrite,
			Hash: "bcrypt:" + string(legacy), Created: *at(3 * time.Minute),
		},
	}
}

// seed fills the store spec names with seedTokens, two users and settings.
func seed(t *testing.T, spec, realm string) {
	t.Helper()
	off := false
	withStore(t, spec, realm, func(s tokenstore.Store) {
		ctx := context.Background()
		for _, tok := range seedTokens(t) {
			if err := s.CreateToken(ctx, tok); err != nil {
				t.Fatalf("seeding %s: %v", spec, err)
			}
		}
		for name, u := range map[string]tokenstore.User{
			"alice": {Groups: []string{"dev", "ops"}},
			"bob":   {Disabled: true},
		} {
			if err := s.PutUser(ctx, name, u); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.PutSettings(ctx, tokenstore.Settings{TestEndpointEnabled: &off}); err != nil {
			t.Fatal(err)
		}
	})
}

// contents is a store's tokens, users and settings as JSON, times
// truncated to the microsecond if coarse (PostgreSQL keeps no finer).
func contents(t *testing.T, spec, realm string, coarse bool) string {
	t.Helper()
	s := openSpec(t, spec, realm)
	ctx := context.Background()
	tokens, err := s.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	users, err := s.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	settings, err := s.Settings(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if coarse {
		trunc := func(p *time.Time) {
			if p != nil {
				*p = p.Truncate(time.Microsecond)
			}
		}
		for i := range tokens {
			tok := &tokens[i]
			for _, p := range []*time.Time{&tok.Created, tok.Expires, tok.Revoked, tok.LastUsed} {
				trunc(p)
			}
		}
	}
	data, err := json.MarshalIndent(map[string]any{"tokens": tokens, "users": users, "settings": settings}, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestMigrateRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		from, to func(*testing.T) string
		coarse   bool // PostgreSQL on a side: times to the microsecond
	}{
		{"file to sqlite", fileSpec, sqliteSpec, false},
		{"file to postgres", fileSpec, postgresSpec, true},
		{"sqlite to file", sqliteSpec, fileSpec, false},
		{"postgres to sqlite", postgresURLSpec, sqliteSpec, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			from, to := tc.from(t), tc.to(t)
			seed(t, from, "default")

			stdout, stderr := mustRun(t, "migrate", "--from", from, "--to", to)
			fromCfg, _ := tokenstore.ParseSpec(from)
			toCfg, _ := tokenstore.ParseSpec(to)
			if stdout != "" || !strings.Contains(stderr, "Copied 4 token(s), 2 user(s) and the settings from "+fromCfg.String()) ||
				!strings.Contains(stderr, " to "+toCfg.String()) {
				t.Errorf("stdout %q, stderr %q: want the summary on stderr", stdout, stderr)
			}
			for _, spec := range []string{from, to} {
				if pw := passwordOf(spec); pw != "" && strings.Contains(stderr, pw) {
					t.Errorf("the summary shows the database password: %q", stderr)
				}
			}

			want, got := contents(t, from, "default", tc.coarse), contents(t, to, "default", tc.coarse)
			if got != want {
				t.Errorf("target after migrate:\n%s\nwant the source's:\n%s", got, want)
			}
			checkAuthenticates(t, to)

			// Again: the target is no longer empty.
			_, _, err := run(t, "", "migrate", "--from", from, "--to", to)
			if err == nil || !strings.Contains(err.Error(), toCfg.String()) || !strings.Contains(err.Error(), "--force") {
				t.Errorf("migrating into a non-empty target: error %v, want one naming %s and --force", err, toCfg)
			}
			// With --force every token is there unchanged: nothing to add.
			_, stderr = mustRun(t, "migrate", "--from", from, "--to", to, "--force")
			if !strings.Contains(stderr, "Copied 0 token(s) (and skipped 4 already there), 2 user(s) and the settings") {
				t.Errorf("second migrate --force: stderr %q", stderr)
			}
			if again := contents(t, to, "default", tc.coarse); again != want {
				t.Errorf("target after migrate --force again:\n%s\nwant:\n%s", again, want)
			}
		})
	}
}

// passwordOf returns the password of a PostgreSQL URL spec, if any.
func passwordOf(spec string) string {
	_, rest, _ := strings.Cut(spec, "://")
	userinfo, _, ok := strings.Cut(rest, "@")
	if !ok {
		return ""
	}
	_, pw, _ := strings.Cut(userinfo, ":")
	return pw
}

// checkAuthenticates looks the seeded tokens up in the migrated store as
// the handler does: by the digest of the secret, or for the imported
// credential by user and slow hash.
func checkAuthenticates(t *testing.T, spec string) {
	t.Helper()
	s := openSpec(t, spec, "default")
	ctx := context.Background()
	now := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	tok, err := s.LookupToken(ctx, tokenstore.DigestOf(activeSecret))
	if err != nil || tok.ID != "tok-active" || !tok.Usable(now) || !tok.AllowsIP(netip.MustParseAddr("10.9.9.9")) {
		t.Errorf("LookupToken(active secret) = %+v, %v: want tok-active, usable from 10.9.9.9", tok, err)
	}
	tok, err = s.LookupToken(ctx, tokenstore.DigestOf(revokedSecret))
	if err != nil || tok.ID != "tok-revoked" || tok.Status(now) != "revoked" {
		t.Errorf("LookupToken(revoked secret) = %+v, %v: want tok-revoked, still revoked", tok, err)
	}
	basic, err := s.LookupBasic(ctx, "carol")
	if err != nil || len(basic) != 1 || !tokenstore.NewSlowVerifier(4).Verify(basic[0], legacySecret) {
		t.Errorf("LookupBasic(carol) = %v, %v: want tok-legacy, verifying its password", basic, err)
	}
}

func TestMigrateIntoNonEmptyTarget(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	seeded := seedTokens(t)
	other := tokenstore.Token{ID: "tok-other", User: "dave", Scope: tokenstore.ScopeReadOnly,
		Hash: tokenstore.HashSecret("cat_migrate_other_0004"), Created: time.Now().UTC()}
	off, on := false, true
	for _, tc := range []struct {
		name  string
		fill  func(t *testing.T, s tokenstore.Store)
		force bool
		// want is in the error; "" for success.
		want string
		// wantTokens is the target's token ids after, oldest first.
		wantTokens []string
		// wantUsers is the target's users after.
		wantUsers string
		// wantOut is in the summary after success.
		wantOut string
	}{
		{
			name: "a user, no --force",
			fill: func(t *testing.T, s tokenstore.Store) {
				mustPutUser(t, s, "alice", tokenstore.User{Groups: []string{"x"}})
			},
			want: "is not empty: it has 0 token(s) and 1 user(s)", wantUsers: `{"alice":{"groups":["x"]}}`,
		},
		{
			name: "a token, no --force",
			fill: func(t *testing.T, s tokenstore.Store) { mustCreateToken(t, s, other) },
			want: "is not empty: it has 1 token(s) and 0 user(s)", wantTokens: []string{"tok-other"}, wantUsers: `{}`,
		},
		{
			name: "settings, no --force",
			fill: func(t *testing.T, s tokenstore.Store) {
				if err := s.PutSettings(ctx, tokenstore.Settings{TestEndpointEnabled: &on}); err != nil {
					t.Fatal(err)
				}
			},
			want: "0 token(s), 0 user(s) and settings (test_endpoint_enabled true)", wantUsers: `{}`,
		},
		{
			name: "--force adds, replacing users",
			fill: func(t *testing.T, s tokenstore.Store) {
				mustCreateToken(t, s, other)
				mustPutUser(t, s, "alice", tokenstore.User{Groups: []string{"x"}})
				mustPutUser(t, s, "dave", tokenstore.User{})
			},
			force:      true,
			wantTokens: []string{"tok-active", "tok-revoked", "tok-expired", "tok-legacy", "tok-other"},
			wantUsers:  `{"alice":{"groups":["dev","ops"]},"bob":{"disabled":true},"dave":{}}`,
			wantOut:    "Copied 4 token(s), 2 user(s) and the settings",
		},
		{
			// What a copy that failed half way leaves: some users and
			// the oldest tokens. Running it again with --force finishes.
			name: "--force after a half-done copy",
			fill: func(t *testing.T, s tokenstore.Store) {
				mustPutUser(t, s, "alice", tokenstore.User{Groups: []string{"dev", "ops"}})
				mustCreateToken(t, s, seeded[0], seeded[1])
			},
			force:      true,
			wantTokens: []string{"tok-active", "tok-revoked", "tok-expired", "tok-legacy"},
			wantUsers:  `{"alice":{"groups":["dev","ops"]},"bob":{"disabled":true}}`,
			wantOut:    "Copied 2 token(s) (and skipped 2 already there), 2 user(s) and the settings",
		},
		{
			name: "--force, a token changed since",
			fill: func(t *testing.T, s tokenstore.Store) {
				old := seeded[1]
				old.Revoked = nil // revoked in the source since the first copy
				mustCreateToken(t, s, old)
			},
			force:      true,
			want:       "nothing copied: 1 token(s) conflict with the target's: token tok-revoked exists with another revocation",
			wantTokens: []string{"tok-revoked"}, wantUsers: `{}`,
		},
		{
			name: "--force, another token with the same hash",
			fill: func(t *testing.T, s tokenstore.Store) {
				dup := other
				dup.Hash = seeded[0].Hash
				mustCreateToken(t, s, dup)
				if err := s.PutSettings(ctx, tokenstore.Settings{TestEndpointEnabled: &off}); err != nil {
					t.Fatal(err)
				}
			},
			force:      true,
			want:       "token tok-active has the hash of token tok-other",
			wantTokens: []string{"tok-other"}, wantUsers: `{}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			from, to := fileSpec(t), sqliteSpec(t)
			seed(t, from, "default")
			withStore(t, to, "default", func(s tokenstore.Store) { tc.fill(t, s) })

			args := []string{"migrate", "--from", from, "--to", to}
			if tc.force {
				args = append(args, "--force")
			}
			_, stderr, err := run(t, "", args...)
			toCfg, _ := tokenstore.ParseSpec(to)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("migrate: %v", err)
			case tc.want == "" && !strings.Contains(stderr, tc.wantOut):
				t.Errorf("stderr %q, want %q", stderr, tc.wantOut)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), toCfg.String())):
				t.Fatalf("migrate: error %v, want one naming %s and containing %q", err, toCfg, tc.want)
			}

			s := openSpec(t, to, "default")
			tokens, err := s.ListTokens(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, tok := range tokens {
				ids = append(ids, tok.ID)
			}
			if strings.Join(ids, ",") != strings.Join(tc.wantTokens, ",") {
				t.Errorf("target tokens %v, want %v", ids, tc.wantTokens)
			}
			users, err := s.ListUsers(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if data, _ := json.Marshal(users); string(data) != tc.wantUsers {
				t.Errorf("target users %s, want %s", data, tc.wantUsers)
			}
		})
	}
}

func mustPutUser(t *testing.T, s tokenstore.Store, name string, u tokenstore.User) {
	t.Helper()
	if err := s.PutUser(context.Background(), name, u); err != nil {
		t.Fatal(err)
	}
}

func mustCreateToken(t *testing.T, s tokenstore.Store, tokens ...tokenstore.Token) {
	t.Helper()
	for _, tok := range tokens {
		if err := s.CreateToken(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMigrateRealm(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		to   func(*testing.T) string
		// sql: the target keeps realms apart, and its default realm must
		// stay empty.
		sql bool
	}{
		{"sqlite to postgres", postgresSpec, true},
		{"sqlite to sqlite", sqliteSpec, true},
		{"sqlite to file", fileSpec, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			from, to := sqliteSpec(t), tc.to(t)
			seed(t, from, "billing")
			withStore(t, from, "default", func(s tokenstore.Store) {
				mustCreateToken(t, s, tokenstore.Token{ID: "tok-default", User: "eve", Scope: tokenstore.ScopeReadOnly,
					Hash: tokenstore.HashSecret("cat_migrate_default_0005"), Created: time.Now().UTC()})
			})

			_, stderr := mustRun(t, "migrate", "--from", from, "--to", to, "--realm", "billing")
			if !strings.Contains(stderr, "Copied 4 token(s), 2 user(s) and the settings") ||
				!strings.Contains(stderr, "(realm billing)") {
				t.Errorf("stderr %q: want 4 tokens copied, naming the realm", stderr)
			}
			coarse := strings.HasPrefix(to, "postgres")
			if got, want := contents(t, to, "billing", coarse), contents(t, from, "billing", coarse); got != want {
				t.Errorf("realm billing of the target:\n%s\nwant:\n%s", got, want)
			}
			if tc.sql {
				if got := contents(t, to, "default", false); got != `{
 "settings": {},
 "tokens": [],
 "users": {}
}` {
					t.Errorf("realm default of the target is not empty:\n%s", got)
				}
			}
		})
	}
}

func TestMigrateBadFlags(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	source := "file:" + filepath.Join(dir, "source.json")
	seed(t, source, "default")
	empty := filepath.Join(dir, "empty.json")
	if err := os.WriteFile(empty, []byte(`{"version": 1, "tokens": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.db")
	target := "sqlite:" + filepath.Join(dir, "target.db")

	for _, tc := range []struct {
		name string
		args []string
		want []string // in the error
		not  string   // not in the error
	}{
		{"no --from", []string{"--to", target}, []string{"--from is required"}, ""},
		{"no --to", []string{"--from", source}, []string{"--to is required"}, ""},
		{"unknown --from type", []string{"--from", "mysql:x", "--to", target}, []string{"--from", "mysql"}, ""},
		{"--to without a type", []string{"--from", source, "--to", "tokens.json"}, []string{"--to", "file:<path>"}, ""},
		{"--to postgres without a dsn", []string{"--from", source, "--to", "postgres:"}, []string{"--to"}, ""},
		{"empty --realm", []string{"--from", source, "--to", target, "--realm", ""}, []string{"--realm"}, ""},
		{"the same store", []string{"--from", source, "--to", source}, []string{"--from and --to both name"}, ""},
		{"missing source", []string{"--from", "sqlite:" + missing, "--to", target}, []string{"--from", "does not exist"}, ""},
		{"empty source", []string{"--from", "file:" + empty, "--to", target}, []string{"has no tokens, users or settings"}, ""},
		{
			"unreachable --to",
			[]string{"--from", source, "--to", "postgres://u:hunter2@127.0.0.1:1/db?sslmode=disable&connect_timeout=5"},
			[]string{"--to", "postgres://u:xxxxx@127.0.0.1:1/db"}, "hunter2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := run(t, "", append([]string{"migrate"}, tc.args...)...)
			if err == nil {
				t.Fatal("migrate succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q, want it to contain %q", err, w)
				}
			}
			if tc.not != "" && strings.Contains(err.Error(), tc.not) {
				t.Errorf("error %q shows %q", err, tc.not)
			}
		})
	}
	for _, path := range []string{missing, strings.TrimPrefix(target, "sqlite:")} {
		if _, err := os.Stat(path); err == nil {
			t.Errorf("a failed migrate made %s", path)
		}
	}
}

// A copy that fails half way says what it copied, and running it again
// with --force goes on from there. PostgreSQL refuses text with a NUL
// byte, which the file store takes: a real failure, half way.
func TestMigrateReportsAPartialCopy(t *testing.T) {
	t.Parallel()
	from, to := fileSpec(t), postgresSpec(t)
	seed(t, from, "default")
	withStore(t, from, "default", func(s tokenstore.Store) {
		mustCreateToken(t, s, tokenstore.Token{ID: "tok-nul", User: "alice", Name: "bad\x00name",
			Scope: tokenstore.ScopeReadOnly, Hash: tokenstore.HashSecret("cat_migrate_nul_0006"),
			Created: time.Date(2026, 3, 1, 12, 1, 30, 0, time.UTC)})
	})
	// Oldest first: tok-active, tok-revoked, tok-nul, tok-expired, tok-legacy.
	for _, want := range []string{
		"failed after it copied 2 user(s) and 2 token(s), not the settings: adding token tok-nul:",
		"failed after it copied 2 user(s) and 0 token(s) (and skipped 2 already there), not the settings: adding token tok-nul:",
	} {
		_, _, err := run(t, "", "migrate", "--from", from, "--to", to, "--force")
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "again with --force") {
			t.Fatalf("migrate: error %v, want one containing %q", err, want)
		}
		if pw := passwordOf(to); strings.Contains(err.Error(), pw) {
			t.Errorf("the error shows the database password: %v", err)
		}
		s := openSpec(t, to, "default")
		tokens, err := s.ListTokens(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(tokens) != 2 || tokens[0].ID != "tok-active" || tokens[1].ID != "tok-revoked" {
			t.Errorf("target has %d token(s) %v, want tok-active and tok-revoked", len(tokens), tokens)
		}
	}
}
