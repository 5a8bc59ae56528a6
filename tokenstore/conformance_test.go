package tokenstore

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/internal/testdb"
)

// The conformance suite: every Store implementation must pass every test
// here. Each test runs once per backend, each on a backing store of its
// own (a temporary file, a temporary SQLite database, a fresh PostgreSQL
// database from internal/testdb, which fails rather than skips without a
// server).

// opener opens the backing store of one test for realm; it may be called
// any number of times (a reopen is what a restart or another server
// sees). Every store it opens is closed when the test ends.
type opener func(t *testing.T, realm string) Store

type backend struct {
	name string
	sql  bool // keeps many realms in one database
	// new makes an empty backing store for the test.
	new func(t *testing.T) opener
}

var backends = []backend{
	{"file", false, func(t *testing.T) opener {
		path := filepath.Join(t.TempDir(), "tokens.json")
		return func(t *testing.T, _ string) Store {
			t.Helper()
			s, err := openFile(path, nil, time.Hour, noAutoFlush)
			if err != nil {
				t.Fatalf("opening %s: %v", path, err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}},
	{"sqlite", true, func(t *testing.T) opener {
		path := filepath.Join(t.TempDir(), "tokens.db")
		return func(t *testing.T, realm string) Store {
			t.Helper()
			s, err := openSQLite(path, realm, nil, noAutoFlush)
			if err != nil {
				t.Fatalf("opening %s: %v", path, err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}},
	{"postgres", true, func(t *testing.T) opener {
		dsn := testdb.FreshPostgresDatabase(t)
		return func(t *testing.T, realm string) Store {
			t.Helper()
			s, err := openPostgres(dsn, realm, nil, noAutoFlush)
			if err != nil {
				t.Fatalf("opening the PostgreSQL store: %v", err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}},
	// The SQL stores again, with the look-up cache the handler gives them:
	// a cache must not change any answer.
	{"sqlite-cached", true, func(t *testing.T) opener {
		path := filepath.Join(t.TempDir(), "tokens.db")
		return func(t *testing.T, realm string) Store {
			t.Helper()
			s, err := openSQLiteWith(path, realm, nil, sqlOptions{flushEvery: noAutoFlush, cacheTTL: time.Hour})
			if err != nil {
				t.Fatalf("opening %s: %v", path, err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}},
	{"postgres-cached", true, func(t *testing.T) opener {
		dsn := testdb.FreshPostgresDatabase(t)
		return func(t *testing.T, realm string) Store {
			t.Helper()
			s, err := openPostgresWith(dsn, realm, nil, sqlOptions{flushEvery: noAutoFlush, cacheTTL: time.Hour})
			if err != nil {
				t.Fatalf("opening the PostgreSQL store: %v", err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}},
}

// forEachBackend runs test once per backend (only those keeping many
// realms in one database, with sqlOnly), in parallel.
func forEachBackend(t *testing.T, sqlOnly bool, test func(t *testing.T, open opener)) {
	t.Helper()
	for _, b := range backends {
		if sqlOnly && !b.sql {
			continue
		}
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			test(t, b.new(t))
		})
	}
}

// mustCreate adds tokens to s in order.
func mustCreate(t *testing.T, s Store, tokens ...Token) {
	t.Helper()
	for _, tok := range tokens {
		if err := s.CreateToken(bg, tok); err != nil {
			t.Fatalf("CreateToken(%s): %v", tok.ID, err)
		}
	}
}

func timesEqual(a, b *time.Time) bool {
	return (a == nil) == (b == nil) && (a == nil || a.Equal(*b))
}

// checkSameToken fails unless got has want's stored fields, prepared.
func checkSameToken(t *testing.T, where string, got, want *Token) {
	t.Helper()
	if got.ID != want.ID || got.User != want.User || got.Name != want.Name || got.Scope != want.Scope ||
		got.Hash != want.Hash || !got.Created.Equal(want.Created) ||
		!timesEqual(got.Expires, want.Expires) || !timesEqual(got.Revoked, want.Revoked) ||
		!timesEqual(got.LastUsed, want.LastUsed) || !slices.Equal(got.AllowedIPs, want.AllowedIPs) ||
		!slices.Equal(got.LastIPs, want.LastIPs) || len(got.RequiredHeaders) != len(want.RequiredHeaders) {
		t.Errorf("%s: token = %+v\nwant %+v", where, *got, *want)
		return
	}
	for k, v := range want.RequiredHeaders {
		if got.RequiredHeaders[k] != v {
			t.Errorf("%s: required header %s = %q, want %q", where, k, got.RequiredHeaders[k], v)
		}
	}
	if got.Digest() != want.Digest() || !slices.Equal(got.RequiredHeaderNames(), want.RequiredHeaderNames()) {
		t.Errorf("%s: token %s is not prepared", where, got.ID)
	}
	for _, tm := range []*time.Time{&got.Created, got.Expires, got.Revoked, got.LastUsed} {
		if tm != nil && tm.Location() != time.UTC {
			t.Errorf("%s: token %s has a time in %v, want UTC", where, got.ID, tm.Location())
		}
	}
}

func tokenIDs[T Token | *Token](list []T) []string {
	var out []string
	for _, tok := range list {
		switch v := any(tok).(type) {
		case Token:
			out = append(out, v.ID)
		case *Token:
			out = append(out, v.ID)
		}
	}
	return out
}

// fullToken is a token with every field set.
func fullToken(t *testing.T, id, user string) Token {
	t.Helper()
	tok := tokenAt(t, id, user, baseTime)
	tok.Name = "CI for " + id
	tok.Scope = ScopeReadWrite
	tok.Expires = timePtr(baseTime.Add(90 * 24 * time.Hour))
	tok.AllowedIPs = []string{"10.0.0.0/8", "2001:db8::/32"}
	tok.RequiredHeaders = map[string]string{"X-Team": "blue", "X-Env": "prod"}
	if err := tok.Prepare(); err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestConformanceEmpty(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		if _, err := s.LookupToken(bg, DigestOf("nope")); !errors.Is(err, ErrNotFound) {
			t.Errorf("LookupToken: %v, want ErrNotFound", err)
		}
		if _, err := s.GetToken(bg, "nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
			t.Errorf("GetToken: %v, want ErrNotFound naming the id", err)
		}
		if _, err := s.RevokeToken(bg, "nope", baseTime); !errors.Is(err, ErrNotFound) {
			t.Errorf("RevokeToken: %v, want ErrNotFound", err)
		}
		next, _ := newTestToken(t, "alice")
		if _, err := s.RotateToken(bg, "nope", next, baseTime); !errors.Is(err, ErrNotFound) {
			t.Errorf("RotateToken: %v, want ErrNotFound", err)
		}
		if n, err := s.RevokeUserTokens(bg, "alice", baseTime); n != 0 || err != nil {
			t.Errorf("RevokeUserTokens = %d, %v; want 0, nil", n, err)
		}
		if u, err := s.LookupUser(bg, "alice"); u != nil || err != nil {
			t.Errorf("LookupUser = %v, %v; want nil, nil", u, err)
		}
		if st, err := s.Settings(bg); err != nil || st.TestEndpointEnabled != nil || !st.TestEndpointOn() {
			t.Errorf("Settings = %+v, %v; want defaults", st, err)
		}
		if list, err := s.ListTokens(bg); len(list) != 0 || err != nil {
			t.Errorf("ListTokens = %d tokens, %v", len(list), err)
		}
		if users, err := s.ListUsers(bg); len(users) != 0 || err != nil {
			t.Errorf("ListUsers = %v, %v", users, err)
		}
		if model, err := s.SlowHashModel(bg); model != "" || err != nil {
			t.Errorf("SlowHashModel = %q, %v", model, err)
		}
		if got, err := s.LookupBasic(bg, "alice"); len(got) != 0 || err != nil {
			t.Errorf("LookupBasic = %v, %v", got, err)
		}
		s.RecordUse("nope", baseTime, netip.MustParseAddr("192.0.2.1")) // nothing to record it in
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

func TestConformanceCreateLookupGet(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		full := fullToken(t, "full", "alice")
		plain := tokenAt(t, "plain", "bob", baseTime.Add(time.Second))
		mustCreate(t, s, full, plain)
		if s.Kind() == "" {
			t.Error("Kind() is empty")
		}
		for _, st := range []Store{s, open(t, "r")} {
			for _, want := range []Token{full, plain} {
				got, err := st.LookupToken(bg, DigestOf("secret-of-"+want.ID))
				if err != nil {
					t.Fatalf("LookupToken(%s): %v", want.ID, err)
				}
				checkSameToken(t, "LookupToken", got, &want)
				copy, err := st.GetToken(bg, want.ID)
				if err != nil {
					t.Fatalf("GetToken(%s): %v", want.ID, err)
				}
				checkSameToken(t, "GetToken", &copy, &want)
			}
		}
		if got, err := s.LookupToken(bg, Digest{}); !errors.Is(err, ErrNotFound) {
			t.Errorf("LookupToken(zero digest) = %v, %v; want ErrNotFound", got, err)
		}
	})
}

func TestConformanceListOrder(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		newest := tokenAt(t, "newest", "alice", baseTime.Add(2*time.Hour))
		oldest := tokenAt(t, "oldest", "bob", baseTime)
		middle := slowToken(t, "middle", "carol", bcryptScheme+bcryptMCF(t, "pw"))
		middle.Created = baseTime.Add(time.Hour)
		// Two created in the same second keep the order they were added in.
		tieB := tokenAt(t, "tie-b", "dave", baseTime.Add(time.Hour))
		tieA := tokenAt(t, "tie-a", "dave", baseTime.Add(time.Hour))
		mustCreate(t, s, newest, oldest, middle, tieB, tieA)
		want := []string{"oldest", "middle", "tie-b", "tie-a", "newest"}
		for _, st := range []Store{s, open(t, "r")} {
			list, err := st.ListTokens(bg)
			if err != nil {
				t.Fatal(err)
			}
			if got := tokenIDs(list); !slices.Equal(got, want) {
				t.Errorf("ListTokens order %q, want oldest first %q", got, want)
			}
			if len(list) == len(want) && (!list[1].SlowHash() || list[0].Digest() != DigestOf("secret-of-oldest")) {
				t.Error("listed tokens are not prepared")
			}
		}
	})
}

// TestConformanceCopies: what ListTokens, GetToken and ListUsers return
// are copies. (Settings makes no such promise: the file store shares its
// pointer.)
func TestConformanceCopies(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		full := fullToken(t, "full", "alice")
		full.LastIPs = []string{"10.0.0.1"}
		mustCreate(t, s, full)
		if err := s.PutUser(bg, "alice", User{Groups: []string{"dev"}}); err != nil {
			t.Fatal(err)
		}
		list, _ := s.ListTokens(bg)
		got, _ := s.GetToken(bg, "full")
		for _, c := range []Token{list[0], got} {
			*c.Expires = baseTime
			c.AllowedIPs[0] = "0.0.0.0/0"
			c.RequiredHeaders["X-Team"] = "red"
			c.LastIPs[0] = "192.0.2.1"
			c.User = "mallory"
		}
		users, _ := s.ListUsers(bg)
		users["alice"].Groups[0] = "admin"

		again, _ := s.GetToken(bg, "full")
		served, _ := s.LookupToken(bg, DigestOf("secret-of-full"))
		checkSameToken(t, "GetToken after changing copies", &again, &full)
		checkSameToken(t, "LookupToken after changing copies", served, &full)
		if u, _ := s.LookupUser(bg, "alice"); u == nil || u.Groups[0] != "dev" {
			t.Errorf("changing a listed user changed the store: %+v", u)
		}
	})
}

func TestConformanceDuplicates(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		a := tokenAt(t, "a", "alice", baseTime)
		mustCreate(t, s, a)
		sameID, _ := newTestToken(t, "bob")
		sameID.ID = "a"
		if err := s.CreateToken(bg, sameID); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("CreateToken(same id) error = %v, want one containing %q", err, "already exists")
		}
		sameHash, _ := newTestToken(t, "bob")
		sameHash.Hash = a.Hash
		if err := s.CreateToken(bg, sameHash); err == nil || !strings.Contains(err.Error(), "same hash") {
			t.Errorf("CreateToken(same hash) error = %v, want one containing %q", err, "same hash")
		}
		bad, _ := newTestToken(t, "bob")
		bad.AllowedIPs = []string{"not-an-ip"}
		if err := s.CreateToken(bg, bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "allowed_ips") {
			t.Errorf("CreateToken(bad allowed_ips) error = %v, want ErrInvalid naming allowed_ips", err)
		}
		// Salted hashes are not unique keys: the same slow hash twice is fine.
		slow := bcryptScheme + bcryptMCF(t, "pw")
		mustCreate(t, s, slowToken(t, "s1", "bob", slow), slowToken(t, "s2", "bob", slow))
		for _, st := range []Store{s, open(t, "r")} {
			list, _ := st.ListTokens(bg)
			if got := tokenIDs(list); !slices.Equal(got, []string{"a", "s1", "s2"}) {
				t.Errorf("tokens after refused duplicates: %q", got)
			}
			if got, err := st.LookupToken(bg, DigestOf("secret-of-a")); err != nil || got.User != "alice" {
				t.Errorf("the original token looks up as %+v, %v", got, err)
			}
		}
	})
}

func TestConformanceRevokeToken(t *testing.T) {
	at := baseTime.Add(10 * time.Hour)
	earlier, later := at.Add(-time.Hour), at.Add(time.Hour)
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		tests := []struct {
			id      string
			revoked *time.Time
			want    time.Time
		}{
			{"active", nil, at},
			{"earlier", &earlier, earlier},
			{"same", &at, at},
			{"scheduled", &later, at},
		}
		for _, tt := range tests {
			tok := tokenAt(t, tt.id, "alice", baseTime)
			tok.Revoked = tt.revoked
			mustCreate(t, s, tok)
		}
		mustCreate(t, s, tokenAt(t, "other", "alice", baseTime))
		for _, tt := range tests {
			got, err := s.RevokeToken(bg, tt.id, at.In(time.FixedZone("X", 3600)))
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tt.id || !timesEqual(got.Revoked, &tt.want) {
				t.Errorf("RevokeToken(%s) returned revoked %v, want %v", tt.id, got.Revoked, tt.want)
			}
		}
		for _, st := range []Store{s, open(t, "r")} {
			for _, tt := range tests {
				served, err := st.LookupToken(bg, DigestOf("secret-of-"+tt.id))
				if err != nil {
					t.Fatal(err)
				}
				if !timesEqual(served.Revoked, &tt.want) || served.Revoked.Location() != time.UTC || served.Usable(at) {
					t.Errorf("token %s: revoked %v, want %v in UTC", tt.id, served.Revoked, tt.want)
				}
			}
			if other, _ := st.GetToken(bg, "other"); other.Revoked != nil {
				t.Error("revoking the others revoked other")
			}
		}
	})
}

func TestConformanceRevokeUserTokens(t *testing.T) {
	at := baseTime.Add(10 * time.Hour)
	earlier, later := at.Add(-time.Hour), at.Add(time.Hour)
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		active := tokenAt(t, "active", "alice", baseTime)
		gone := tokenAt(t, "gone", "alice", baseTime)
		gone.Revoked = &earlier
		scheduled := tokenAt(t, "scheduled", "alice", baseTime)
		scheduled.Revoked = &later
		slow := slowToken(t, "slow", "alice", bcryptScheme+bcryptMCF(t, "pw"))
		bobs := tokenAt(t, "bobs", "bob", baseTime)
		mustCreate(t, s, active, gone, scheduled, slow, bobs)

		n, err := s.RevokeUserTokens(bg, "alice", at)
		if err != nil || n != 3 {
			t.Errorf("RevokeUserTokens(alice) = %d, %v; want 3 (active, scheduled, slow; not the one revoked earlier)", n, err)
		}
		want := map[string]*time.Time{"active": &at, "gone": &earlier, "scheduled": &at, "slow": &at, "bobs": nil}
		for _, st := range []Store{s, open(t, "r")} {
			for id, w := range want {
				tok, err := st.GetToken(bg, id)
				if err != nil {
					t.Fatal(err)
				}
				if !timesEqual(tok.Revoked, w) {
					t.Errorf("token %s: revoked %v, want %v", id, tok.Revoked, w)
				}
			}
		}
		for _, user := range []string{"alice", "nobody", ""} {
			if n, err := s.RevokeUserTokens(bg, user, at.Add(time.Hour)); n != 0 || err != nil {
				t.Errorf("RevokeUserTokens(%q) again = %d, %v; want 0, nil", user, n, err)
			}
		}
	})
}

func TestConformanceRotateToken(t *testing.T) {
	grace := baseTime.Add(24 * time.Hour)
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		tests := []struct {
			id         string
			oldExpires *time.Time
			want       time.Time
		}{
			{"none", nil, grace},
			{"later", timePtr(grace.Add(time.Hour)), grace},
			{"earlier", timePtr(grace.Add(-time.Hour)), grace.Add(-time.Hour)},
		}
		secrets := map[string]string{}
		for _, tt := range tests {
			old := tokenAt(t, tt.id, "alice", baseTime)
			old.Expires = tt.oldExpires
			mustCreate(t, s, old)
			next, secret := newTestToken(t, "alice")
			secrets[tt.id] = secret
			got, err := s.RotateToken(bg, tt.id, next, grace.In(time.FixedZone("X", -3600)))
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tt.id || !timesEqual(got.Expires, &tt.want) {
				t.Errorf("RotateToken(%s) returned %s expiring %v, want expiring %v", tt.id, got.ID, got.Expires, tt.want)
			}
		}
		for _, st := range []Store{s, open(t, "r")} {
			for _, tt := range tests {
				if tok, err := st.LookupToken(bg, DigestOf(secrets[tt.id])); err != nil || tok.User != "alice" {
					t.Errorf("the token rotated from %s is not served: %v", tt.id, err)
				}
				if tok, _ := st.GetToken(bg, tt.id); !timesEqual(tok.Expires, &tt.want) || tok.Expires.Location() != time.UTC {
					t.Errorf("%s expires %v, want %v in UTC", tt.id, tok.Expires, tt.want)
				}
			}
		}

		// Refusals: neither half happens.
		old := tokenAt(t, "old", "bob", baseTime)
		mustCreate(t, s, old)
		refusals := []struct {
			name    string
			next    func() Token
			wantErr string
			is      error
		}{
			{"next id taken", func() Token { n, _ := newTestToken(t, "bob"); n.ID = "none"; return n }, "already exists", nil},
			{"next id is old's", func() Token { n, _ := newTestToken(t, "bob"); n.ID = "old"; return n }, "already exists", nil},
			{"next hash taken", func() Token { n, _ := newTestToken(t, "bob"); n.Hash = old.Hash; return n }, "same hash", nil},
			{"next invalid", func() Token { n, _ := newTestToken(t, "bob"); n.Scope = "admin"; return n }, "scope", ErrInvalid},
		}
		before, _ := s.ListTokens(bg)
		for _, r := range refusals {
			_, err := s.RotateToken(bg, "old", r.next(), grace)
			if err == nil || !strings.Contains(err.Error(), r.wantErr) || (r.is != nil && !errors.Is(err, r.is)) {
				t.Errorf("%s: RotateToken error = %v, want one containing %q", r.name, err, r.wantErr)
			}
		}
		for _, st := range []Store{s, open(t, "r")} {
			if tok, _ := st.GetToken(bg, "old"); tok.Expires != nil {
				t.Errorf("a refused RotateToken set old's expiry to %v", tok.Expires)
			}
			if after, _ := st.ListTokens(bg); len(after) != len(before) {
				t.Errorf("%d tokens after refused rotations, want %d", len(after), len(before))
			}
		}
	})
}

func TestConformanceUsers(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		if err := s.PutUser(bg, "alice", User{Groups: []string{"dev", "ops"}}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutUser(bg, "bob", User{Disabled: true}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutUser(bg, "carol", User{Groups: []string{"x"}}); err != nil {
			t.Fatal(err)
		}
		// Replacing a record.
		if err := s.PutUser(bg, "carol", User{Groups: []string{"y", "z"}, Disabled: true}); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []struct {
			name string
			u    User
			want string
		}{
			{"", User{}, "user name"},
			{"eve\n", User{}, "control character"},
			{"eve", User{Groups: []string{""}}, "groups[0]"},
		} {
			if err := s.PutUser(bg, bad.name, bad.u); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("PutUser(%q, %+v) error = %v, want ErrInvalid containing %q", bad.name, bad.u, err, bad.want)
			}
		}
		want := map[string]User{
			"alice": {Groups: []string{"dev", "ops"}},
			"bob":   {Disabled: true},
			"carol": {Groups: []string{"y", "z"}, Disabled: true},
		}
		for _, st := range []Store{s, open(t, "r")} {
			users, err := st.ListUsers(bg)
			if err != nil {
				t.Fatal(err)
			}
			if len(users) != len(want) {
				t.Errorf("ListUsers = %v, want %v", users, want)
			}
			for name, w := range want {
				got := users[name]
				if !slices.Equal(got.Groups, w.Groups) || got.Disabled != w.Disabled {
					t.Errorf("ListUsers[%s] = %+v, want %+v", name, got, w)
				}
				u, err := st.LookupUser(bg, name)
				if err != nil || u == nil || !slices.Equal(u.Groups, w.Groups) || u.Disabled != w.Disabled ||
					u.JoinedGroups() != strings.Join(w.Groups, ",") {
					t.Errorf("LookupUser(%s) = %+v, %v; want %+v, prepared", name, u, err, w)
				}
			}
			if u, err := st.LookupUser(bg, "eve"); u != nil || err != nil {
				t.Errorf("LookupUser(eve) = %v, %v; want nil, nil", u, err)
			}
		}
	})
}

func TestConformanceSettings(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		off, on := false, true
		for _, want := range []*bool{&off, &on, nil, &off} {
			if err := s.PutSettings(bg, Settings{TestEndpointEnabled: want}); err != nil {
				t.Fatal(err)
			}
			for _, st := range []Store{s, open(t, "r")} {
				got, err := st.Settings(bg)
				if err != nil {
					t.Fatal(err)
				}
				if (got.TestEndpointEnabled == nil) != (want == nil) || (want != nil && *got.TestEndpointEnabled != *want) {
					t.Errorf("Settings().TestEndpointEnabled = %v, want %v", got.TestEndpointEnabled, want)
				}
			}
		}
	})
}

func TestConformanceSlowHashes(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		mustCreate(t, s, tokenAt(t, "fast", "alice", baseTime))
		if model, err := s.SlowHashModel(bg); model != "" || err != nil {
			t.Errorf("SlowHashModel with sha256 tokens only = %q, %v", model, err)
		}
		mustCreate(t, s,
			slowToken(t, "bc", "alice", bcryptScheme+bcryptMCF(t, "alice-pw")),
			slowToken(t, "ar", "alice", argon2idScheme+argon2idPHC("alice-pw2", testSalt, 64, 1, 1)),
			slowToken(t, "bob1", "bob", bcryptScheme+bcryptMCF(t, "bob-pw")),
		)
		for _, st := range []Store{s, open(t, "r")} {
			// Two bcrypt hashes of cost 4 against one argon2id: the model
			// is the first bcrypt one.
			if model, err := st.SlowHashModel(bg); err != nil || !strings.HasPrefix(model, bcryptScheme) {
				t.Errorf("SlowHashModel = %.20q…, %v; want a bcrypt hash", model, err)
			}
			for user, want := range map[string][]string{"alice": {"bc", "ar"}, "bob": {"bob1"}, "carol": nil, "": nil} {
				got, err := st.LookupBasic(bg, user)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(tokenIDs(got), want) {
					t.Errorf("LookupBasic(%q) = %q, want %q", user, tokenIDs(got), want)
				}
			}
			var v SlowVerifier
			got, _ := st.LookupBasic(bg, "alice")
			if len(got) != 2 || !v.Verify(got[0], "alice-pw") || !v.Verify(got[1], "alice-pw2") || v.Verify(got[0], "alice-pw2") {
				t.Error("alice's slow tokens do not verify with their secrets only")
			}
		}
	})
}

func TestConformanceRecordUse(t *testing.T) {
	forEachBackend(t, false, func(t *testing.T, open opener) {
		s := open(t, "r")
		a := tokenAt(t, "a", "alice", baseTime)
		a.LastIPs = []string{"198.51.100.1"}
		b := tokenAt(t, "b", "bob", baseTime)
		mustCreate(t, s, a, b)
		ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}) }
		// Seven uses of a from six addresses (the first twice), out of
		// time order: the newest time wins, and the five most recently
		// seen addresses are kept, newest first.
		for i := 1; i <= 6; i++ {
			s.RecordUse("a", baseTime.Add(time.Duration(i)*time.Minute), ip(i))
		}
		s.RecordUse("a", baseTime.Add(30*time.Second), ip(2))
		s.RecordUse("b", baseTime.Add(time.Hour), netip.Addr{}) // no known address
		s.RecordUse("gone", baseTime, ip(9))
		if got, _ := s.GetToken(bg, "a"); got.LastUsed != nil {
			t.Errorf("RecordUse wrote at once: last_used %v", got.LastUsed)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		r := open(t, "r")
		gotA, err := r.GetToken(bg, "a")
		if err != nil {
			t.Fatal(err)
		}
		wantIPs := []string{"192.0.2.2", "192.0.2.6", "192.0.2.5", "192.0.2.4", "192.0.2.3"}
		if !timesEqual(gotA.LastUsed, timePtr(baseTime.Add(6*time.Minute))) || !slices.Equal(gotA.LastIPs, wantIPs) {
			t.Errorf("after Close and reopen, a: last_used %v, last_ips %q; want %v, %q",
				gotA.LastUsed, gotA.LastIPs, baseTime.Add(6*time.Minute), wantIPs)
		}
		gotB, _ := r.GetToken(bg, "b")
		if !timesEqual(gotB.LastUsed, timePtr(baseTime.Add(time.Hour))) || len(gotB.LastIPs) != 0 {
			t.Errorf("b: last_used %v, last_ips %q", gotB.LastUsed, gotB.LastIPs)
		}

		// A later batch merges with what is stored; an older use does not
		// move last_used back.
		r.RecordUse("a", baseTime, ip(7))
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		gotA, _ = open(t, "r").GetToken(bg, "a")
		wantIPs = []string{"192.0.2.7", "192.0.2.2", "192.0.2.6", "192.0.2.5", "192.0.2.4"}
		if !timesEqual(gotA.LastUsed, timePtr(baseTime.Add(6*time.Minute))) || !slices.Equal(gotA.LastIPs, wantIPs) {
			t.Errorf("after a second batch, a: last_used %v, last_ips %q; want %q", gotA.LastUsed, gotA.LastIPs, wantIPs)
		}
	})
}

// TestConformanceRealms: realms sharing one database see only their own
// tokens, users and settings.
func TestConformanceRealms(t *testing.T) {
	forEachBackend(t, true, func(t *testing.T, open opener) {
		one, two := open(t, "one"), open(t, "two")
		// The same id and the same hash in both realms are no conflict.
		mustCreate(t, one, tokenAt(t, "a", "alice", baseTime), tokenAt(t, "only-one", "alice", baseTime))
		mustCreate(t, two, tokenAt(t, "a", "bob", baseTime), slowToken(t, "slow", "bob", bcryptScheme+bcryptMCF(t, "pw")))
		if err := one.PutUser(bg, "alice", User{Groups: []string{"one"}}); err != nil {
			t.Fatal(err)
		}
		off := false
		if err := two.PutSettings(bg, Settings{TestEndpointEnabled: &off}); err != nil {
			t.Fatal(err)
		}
		if n, err := two.RevokeUserTokens(bg, "alice", baseTime); n != 0 || err != nil {
			t.Errorf("two.RevokeUserTokens(alice) = %d, %v; want 0 (alice's tokens are in one)", n, err)
		}
		if _, err := two.RevokeToken(bg, "only-one", baseTime); !errors.Is(err, ErrNotFound) {
			t.Errorf("two.RevokeToken(only-one) = %v, want ErrNotFound", err)
		}

		if got, _ := one.LookupToken(bg, DigestOf("secret-of-a")); got == nil || got.User != "alice" {
			t.Errorf("one's token a = %+v", got)
		}
		if got, _ := two.LookupToken(bg, DigestOf("secret-of-a")); got == nil || got.User != "bob" {
			t.Errorf("two's token a = %+v", got)
		}
		if _, err := two.GetToken(bg, "only-one"); !errors.Is(err, ErrNotFound) {
			t.Errorf("two sees one's token: %v", err)
		}
		if l, _ := one.ListTokens(bg); !slices.Equal(tokenIDs(l), []string{"a", "only-one"}) {
			t.Errorf("one lists %q", tokenIDs(l))
		}
		if l, _ := two.ListTokens(bg); !slices.Equal(tokenIDs(l), []string{"a", "slow"}) {
			t.Errorf("two lists %q", tokenIDs(l))
		}
		if model, _ := one.SlowHashModel(bg); model != "" {
			t.Error("one has two's slow hash")
		}
		if u, _ := two.LookupUser(bg, "alice"); u != nil {
			t.Errorf("two sees one's user: %+v", u)
		}
		if users, _ := two.ListUsers(bg); len(users) != 0 {
			t.Errorf("two lists one's users: %v", users)
		}
		if st, _ := one.Settings(bg); !st.TestEndpointOn() {
			t.Error("one has two's settings")
		}
		if tok, _ := one.GetToken(bg, "only-one"); tok.Revoked != nil {
			t.Error("two revoked one's token")
		}
	})
}
