package tokenstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeCounter counts the store's file writes and keeps what each wrote.
type writeCounter struct {
	mu     sync.Mutex
	writes [][]byte
	fail   error // when set, writes fail with it and write nothing
}

// countWrites makes s report its file writes to the returned counter.
func countWrites(s *FileStore) *writeCounter {
	c := new(writeCounter)
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.writeFile = func(path string, encode func(io.Writer) error) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.fail != nil {
			return c.fail
		}
		var data bytes.Buffer
		if err := encode(&data); err != nil {
			return err
		}
		c.writes = append(c.writes, data.Bytes())
		return writeFileAtomic(path, func(w io.Writer) error {
			_, err := w.Write(data.Bytes())
			return err
		})
	}
	return c
}

func (c *writeCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.writes)
}

func (c *writeCounter) last(t *testing.T) *fileDocument {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.writes) == 0 {
		t.Fatal("no file write")
	}
	doc, err := decodeDocument(c.writes[len(c.writes)-1])
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// writeDoc writes a store file by hand.
func writeDoc(t *testing.T, path string, doc fileDocument) {
	t.Helper()
	doc.Version = 1
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// reopen opens the store file afresh, as another server or a restart
// would, to see what is durably stored.
func reopen(t *testing.T, path string) *FileStore {
	t.Helper()
	s, err := openFile(path, nil, time.Hour, noAutoFlush)
	if err != nil {
		t.Fatalf("reopening %s: %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// tokenAt returns a prepared sha256 token of user created at created.
func tokenAt(t *testing.T, id, user string, created time.Time) Token {
	t.Helper()
	tok := validToken(id, user)
	tok.Created = created
	if err := tok.Prepare(); err != nil {
		t.Fatal(err)
	}
	return tok
}

var (
	baseTime = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	bg       = context.Background()
)

func timePtr(tm time.Time) *time.Time { return &tm }

func TestFileStoreLookupBasic(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	sameHash := bcryptScheme + bcryptMCF(t, "shared")
	tokens := []Token{
		tokenAt(t, "fast", "alice", baseTime),
		slowToken(t, "bc", "alice", bcryptScheme+bcryptMCF(t, "alice-pw")),
		slowToken(t, "ar", "alice", argon2idScheme+argon2idPHC("alice-pw2", testSalt, 64, 1, 1)),
		// Salted hashes are not unique keys: the same hash twice is allowed.
		slowToken(t, "bob1", "bob", sameHash),
		slowToken(t, "bob2", "bob", sameHash),
	}
	if err := os.WriteFile(path, docBytes(t, tokens...), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := openTestStore(t, path)

	ids := func(list []*Token) []string {
		var out []string
		for _, tok := range list {
			out = append(out, tok.ID)
		}
		return out
	}
	tests := []struct {
		user string
		want []string
	}{
		{"alice", []string{"bc", "ar"}},
		{"bob", []string{"bob1", "bob2"}},
		{"carol", nil},
		{"", nil},
	}
	for _, tt := range tests {
		got, err := s.LookupBasic(bg, tt.user)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(got), tt.want) {
			t.Errorf("LookupBasic(%q) = %q, want %q", tt.user, ids(got), tt.want)
		}
		for _, tok := range got {
			if !tok.SlowHash() || tok.User != tt.user {
				t.Errorf("LookupBasic(%q) returned %s of %s, slow %v", tt.user, tok.ID, tok.User, tok.SlowHash())
			}
		}
	}
	// Slow tokens have no digest: the zero digest finds nothing.
	if _, err := s.LookupToken(bg, Digest{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("LookupToken(zero digest): %v, want ErrNotFound", err)
	}
	if got, err := s.LookupToken(bg, DigestOf("secret-of-fast")); err != nil || got.ID != "fast" {
		t.Errorf("LookupToken(fast) = %v, %v", got, err)
	}
	if n := len(s.Tokens()); n != len(tokens) {
		t.Errorf("Tokens() has %d tokens, want %d", n, len(tokens))
	}

	// Found tokens verify, end to end.
	var v SlowVerifier
	got, _ := s.LookupBasic(bg, "alice")
	if !v.Verify(got[0], "alice-pw") || !v.Verify(got[1], "alice-pw2") || v.Verify(got[0], "alice-pw2") {
		t.Error("alice's slow tokens do not verify with their secrets only")
	}

	// One created through the store is found at once.
	c := slowToken(t, "car", "carol", argon2idScheme+argon2idPHC("carol-pw", testSalt, 64, 1, 1))
	if err := s.CreateToken(bg, c); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.LookupBasic(bg, "carol"); !slices.Equal(ids(got), []string{"car"}) {
		t.Errorf("LookupBasic(carol) after CreateToken = %q", ids(got))
	}
	if got, _ := reopen(t, path).LookupBasic(bg, "carol"); !slices.Equal(ids(got), []string{"car"}) {
		t.Errorf("LookupBasic(carol) after reopening = %q", ids(got))
	}
}

func TestFileStoreListAndGetTokens(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	newest := tokenAt(t, "newest", "alice", baseTime.Add(2*time.Hour))
	oldest := tokenAt(t, "oldest", "bob", baseTime)
	oldest.Expires = timePtr(baseTime.Add(48 * time.Hour))
	oldest.AllowedIPs = []string{"10.0.0.0/8"}
	oldest.RequiredHeaders = map[string]string{"X-Team": "blue"}
	oldest.LastIPs = []string{"10.0.0.1"}
	middle := slowToken(t, "middle", "carol", bcryptScheme+bcryptMCF(t, "pw"))
	middle.Created = baseTime.Add(time.Hour)
	if err := os.WriteFile(path, docBytes(t, newest, oldest, middle), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := openTestStore(t, path)

	list, err := s.ListTokens(bg)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tok := range list {
		ids = append(ids, tok.ID)
	}
	if want := []string{"oldest", "middle", "newest"}; !slices.Equal(ids, want) {
		t.Fatalf("ListTokens order %q, want oldest first %q", ids, want)
	}
	if !list[1].SlowHash() || list[0].Digest() != DigestOf("secret-of-oldest") {
		t.Error("listed tokens are not prepared copies")
	}

	got, err := s.GetToken(bg, "oldest")
	if err != nil {
		t.Fatal(err)
	}
	if got.User != "bob" || !got.Expires.Equal(*oldest.Expires) || got.RequiredHeaders["X-Team"] != "blue" {
		t.Errorf("GetToken(oldest) = %+v", got)
	}
	if _, err := s.GetToken(bg, "nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("GetToken(unknown) error = %v, want ErrNotFound naming the id", err)
	}

	// Copies out: changing them changes nothing served.
	for _, c := range []Token{list[0], got} {
		*c.Expires = baseTime.Add(1000 * time.Hour)
		c.AllowedIPs[0] = "0.0.0.0/0"
		c.RequiredHeaders["X-Team"] = "red"
		c.LastIPs[0] = "192.0.2.1"
		c.User = "mallory"
	}
	again, _ := s.GetToken(bg, "oldest")
	served, _ := s.LookupToken(bg, DigestOf("secret-of-oldest"))
	for _, tok := range []*Token{&again, served} {
		if !tok.Expires.Equal(*oldest.Expires) || tok.AllowedIPs[0] != "10.0.0.0/8" ||
			tok.RequiredHeaders["X-Team"] != "blue" || tok.LastIPs[0] != "10.0.0.1" || tok.User != "bob" {
			t.Errorf("changing a returned copy changed the store: %+v", tok)
		}
	}
}

func TestFileStoreRevokeToken(t *testing.T) {
	t.Parallel()
	at := baseTime.Add(10 * time.Hour)
	earlier, later := at.Add(-time.Hour), at.Add(time.Hour)
	tests := []struct {
		name      string
		revoked   *time.Time
		want      time.Time
		wantWrite bool
	}{
		{"active", nil, at, true},
		{"revoked earlier keeps its time", &earlier, earlier, false},
		{"revoked at the same time", &at, at, false},
		{"scheduled revocation brought forward", &later, at, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			a := tokenAt(t, "a", "alice", baseTime)
			a.Revoked = tt.revoked
			b := tokenAt(t, "b", "alice", baseTime)
			if err := os.WriteFile(path, docBytes(t, a, b), 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := openTestStore(t, path)
			writes := countWrites(s)

			got, err := s.RevokeToken(bg, "a", at.In(time.FixedZone("X", 3600)))
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != "a" || got.Revoked == nil || !got.Revoked.Equal(tt.want) {
				t.Errorf("RevokeToken returned revoked %v, want %v", got.Revoked, tt.want)
			}
			if n := writes.count(); n != map[bool]int{true: 1, false: 0}[tt.wantWrite] {
				t.Errorf("%d file writes, want write %v", n, tt.wantWrite)
			}
			// In memory at once, and on disk.
			served, _ := s.LookupToken(bg, DigestOf("secret-of-a"))
			stored, _ := reopen(t, path).GetToken(bg, "a")
			for where, tok := range map[string]*Token{"served": served, "reopened": &stored} {
				if tok.Revoked == nil || !tok.Revoked.Equal(tt.want) || tok.Usable(at) {
					t.Errorf("%s token: revoked %v, want %v", where, tok.Revoked, tt.want)
				}
			}
			if tok := fileToken(t, decodeFile(t, path), "a"); tok.Revoked.Location() != time.UTC {
				t.Errorf("revoked time written in %v, want UTC", tok.Revoked.Location())
			}
			if tok := fileToken(t, decodeFile(t, path), "b"); tok.Revoked != nil {
				t.Error("revoking a revoked b too")
			}
		})
	}

	t.Run("unknown id", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "tokens.json")
		before := docBytes(t, tokenAt(t, "a", "alice", baseTime))
		if err := os.WriteFile(path, before, 0o600); err != nil {
			t.Fatal(err)
		}
		s, _ := openTestStore(t, path)
		if _, err := s.RevokeToken(bg, "nope", at); !errors.Is(err, ErrNotFound) {
			t.Errorf("RevokeToken(unknown) error = %v, want ErrNotFound", err)
		}
		if !bytes.Equal(readFile(t, path), before) {
			t.Error("RevokeToken(unknown) changed the file")
		}
	})
}

func TestFileStoreRevokeUserTokens(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	at := baseTime.Add(10 * time.Hour)
	earlier, later := at.Add(-time.Hour), at.Add(time.Hour)
	active := tokenAt(t, "active", "alice", baseTime)
	gone := tokenAt(t, "gone", "alice", baseTime)
	gone.Revoked = &earlier
	scheduled := tokenAt(t, "scheduled", "alice", baseTime)
	scheduled.Revoked = &later
	slow := slowToken(t, "slow", "alice", bcryptScheme+bcryptMCF(t, "pw"))
	bobs := tokenAt(t, "bobs", "bob", baseTime)
	if err := os.WriteFile(path, docBytes(t, active, gone, scheduled, slow, bobs), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := openTestStore(t, path)
	writes := countWrites(s)

	n, err := s.RevokeUserTokens(bg, "alice", at)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("RevokeUserTokens(alice) = %d, want 3 (active, scheduled, slow; not the one revoked earlier)", n)
	}
	if writes.count() != 1 {
		t.Errorf("%d file writes, want 1", writes.count())
	}
	want := map[string]*time.Time{"active": &at, "gone": &earlier, "scheduled": &at, "slow": &at, "bobs": nil}
	for _, store := range []*FileStore{s, reopen(t, path)} {
		for id, w := range want {
			tok, err := store.GetToken(bg, id)
			if err != nil {
				t.Fatal(err)
			}
			if (tok.Revoked == nil) != (w == nil) || (w != nil && !tok.Revoked.Equal(*w)) {
				t.Errorf("token %s: revoked %v, want %v", id, tok.Revoked, w)
			}
		}
	}

	// Again: nothing left to revoke, and nothing written.
	for _, user := range []string{"alice", "nobody", ""} {
		if n, err := s.RevokeUserTokens(bg, user, at.Add(time.Hour)); n != 0 || err != nil {
			t.Errorf("RevokeUserTokens(%q) = %d, %v; want 0, nil", user, n, err)
		}
	}
	if writes.count() != 1 {
		t.Errorf("%d file writes after revoking nothing, want still 1", writes.count())
	}
}

func TestFileStoreRotateToken(t *testing.T) {
	t.Parallel()
	grace := baseTime.Add(24 * time.Hour)
	tests := []struct {
		name       string
		oldExpires *time.Time
		want       time.Time
	}{
		{"no expiry gets the grace end", nil, grace},
		{"later expiry is brought forward", timePtr(grace.Add(time.Hour)), grace},
		{"earlier expiry is kept", timePtr(grace.Add(-time.Hour)), grace.Add(-time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			old := tokenAt(t, "old", "alice", baseTime)
			old.Expires = tt.oldExpires
			other := tokenAt(t, "other", "bob", baseTime)
			if err := os.WriteFile(path, docBytes(t, old, other), 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := openTestStore(t, path)
			writes := countWrites(s)
			next, secret := newTestToken(t, "alice")

			got, err := s.RotateToken(bg, "old", next, grace.In(time.FixedZone("X", -3600)))
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != "old" || got.Expires == nil || !got.Expires.Equal(tt.want) {
				t.Errorf("RotateToken returned %s expiring %v, want old expiring %v", got.ID, got.Expires, tt.want)
			}
			// One write holds both changes.
			if writes.count() != 1 {
				t.Fatalf("RotateToken made %d file writes, want 1", writes.count())
			}
			written := writes.last(t)
			if len(written.Tokens) != 3 || written.Tokens[2].ID != next.ID {
				t.Errorf("the write does not add the new token last")
			}
			if tok := fileToken(t, written, "old"); tok.Expires == nil || !tok.Expires.Equal(tt.want) || tok.Expires.Location() != time.UTC {
				t.Errorf("the write has old expiring %v, want %v in UTC", tok.Expires, tt.want)
			}
			// Served at once, and stored.
			for _, store := range []*FileStore{s, reopen(t, path)} {
				if tok, err := store.LookupToken(bg, DigestOf(secret)); err != nil || tok.ID != next.ID {
					t.Errorf("the new token is not served: %v", err)
				}
				if tok, _ := store.GetToken(bg, "old"); !tok.Expires.Equal(tt.want) {
					t.Errorf("old expires %v, want %v", tok.Expires, tt.want)
				}
				if tok, _ := store.GetToken(bg, "other"); tok.Expires != nil {
					t.Error("rotating old changed other")
				}
			}
		})
	}
}

func TestFileStoreRotateTokenRefusals(t *testing.T) {
	t.Parallel()
	grace := baseTime.Add(24 * time.Hour)
	old := tokenAt(t, "old", "alice", baseTime)
	tests := []struct {
		name    string
		id      string
		next    func(t *testing.T) Token
		fail    error // the file write fails
		wantErr string
		is      error
	}{
		{"unknown id", "nope", func(t *testing.T) Token { n, _ := newTestToken(t, "alice"); return n }, nil, "nope", ErrNotFound},
		{"next id taken", "old", func(t *testing.T) Token { n, _ := newTestToken(t, "alice"); n.ID = "old"; return n }, nil, "already exists", nil},
		{"next hash taken", "old", func(t *testing.T) Token { n, _ := newTestToken(t, "alice"); n.Hash = old.Hash; return n }, nil, "same hash", nil},
		{"next invalid", "old", func(t *testing.T) Token { n, _ := newTestToken(t, "alice"); n.Scope = "admin"; return n }, nil, "scope", ErrInvalid},
		{"write fails", "old", func(t *testing.T) Token { n, _ := newTestToken(t, "alice"); return n }, errors.New("disk full"), "disk full", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			before := docBytes(t, old)
			if err := os.WriteFile(path, before, 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := openTestStore(t, path)
			writes := countWrites(s)
			writes.fail = tt.fail
			next := tt.next(t)
			_, err := s.RotateToken(bg, tt.id, next, grace)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("RotateToken error = %v, want one containing %q", err, tt.wantErr)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("RotateToken error %v is not %v", err, tt.is)
			}
			// Neither half happened, on disk or in memory.
			if !bytes.Equal(readFile(t, path), before) {
				t.Error("a refused RotateToken changed the file")
			}
			if tok, _ := s.GetToken(bg, "old"); tok.Expires != nil {
				t.Errorf("a refused RotateToken set old's expiry to %v", tok.Expires)
			}
			if n := len(s.Tokens()); n != 1 {
				t.Errorf("%d tokens served after a refused RotateToken, want 1", n)
			}
		})
	}
}

func TestFileStoreUsers(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	s, _ := openTestStore(t, path)

	if users, err := s.ListUsers(bg); err != nil || len(users) != 0 {
		t.Fatalf("ListUsers of an empty store = %v, %v", users, err)
	}
	groups := []string{"dev", "ops"}
	if err := s.PutUser(bg, "alice", User{Groups: groups}); err != nil {
		t.Fatal(err)
	}
	groups[0] = "admin" // the caller's slice is not kept
	if err := s.PutUser(bg, "bob", User{Disabled: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutUser(bg, "Zoë Ünicode", User{Groups: []string{"ré"}}); err != nil {
		t.Fatal(err)
	}
	want := map[string]User{
		"alice":       {Groups: []string{"dev", "ops"}},
		"bob":         {Disabled: true},
		"Zoë Ünicode": {Groups: []string{"ré"}},
	}
	check := func(store *FileStore, when string) {
		t.Helper()
		users, err := store.ListUsers(bg)
		if err != nil {
			t.Fatal(err)
		}
		if len(users) != len(want) {
			t.Errorf("%s: ListUsers has %d users, want %d", when, len(users), len(want))
		}
		for name, w := range want {
			got, ok := users[name]
			if !ok || !slices.Equal(got.Groups, w.Groups) || got.Disabled != w.Disabled {
				t.Errorf("%s: user %q = %+v, want %+v", when, name, got, w)
			}
			u, _ := store.LookupUser(bg, name)
			if u == nil || u.JoinedGroups() != strings.Join(w.Groups, ",") || u.Disabled != w.Disabled {
				t.Errorf("%s: LookupUser(%q) = %+v, want it prepared", when, name, u)
			}
		}
	}
	check(s, "after PutUser")
	check(reopen(t, path), "reopened")

	// Replacing a record replaces it whole.
	if err := s.PutUser(bg, "alice", User{Disabled: true}); err != nil {
		t.Fatal(err)
	}
	want["alice"] = User{Disabled: true}
	check(s, "after replacing alice")
	check(reopen(t, path), "reopened after replacing alice")

	// Copies out.
	users, _ := s.ListUsers(bg)
	users["Zoë Ünicode"].Groups[0] = "admin"
	delete(users, "bob")
	check(s, "after changing ListUsers' result")
}

func TestFileStorePutUserRefusals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		user    string
		groups  []string
		wantErr string
	}{
		{"empty name", "", nil, "user name: must not be empty"},
		{"newline in name", "alice\nINFO forged log line", nil, "user name:"},
		{"NUL in name", "alice\x00", nil, "control character"},
		{"DEL in name", "alice\x7f", nil, "control character"},
		{"C1 control in name", "alice\u0085", nil, "control character"},
		{"invalid UTF-8 name", "alice\xff", nil, "UTF-8"},
		{"empty group", "alice", []string{"dev", ""}, "groups[1]: must not be empty"},
		{"control character in group", "alice", []string{"dev\tops"}, "groups[0]:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			before := []byte(`{"version": 1, "users": {"carol": {"groups": ["x"]}}, "tokens": []}`)
			if err := os.WriteFile(path, before, 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := openTestStore(t, path)
			err := s.PutUser(bg, tt.user, User{Groups: tt.groups})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("PutUser error = %v, want one containing %q", err, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("PutUser error %v does not match ErrInvalid", err)
			}
			if !bytes.Equal(readFile(t, path), before) {
				t.Error("a refused PutUser changed the file")
			}
			if users, _ := s.ListUsers(bg); len(users) != 1 {
				t.Errorf("%d users after a refused PutUser, want 1", len(users))
			}
		})
	}
}

func TestFileStorePutSettings(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(path, docBytes(t, tokenAt(t, "a", "alice", baseTime)), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := openTestStore(t, path)
	tests := []struct {
		name string
		in   *bool
		want bool
	}{
		{"off", ptr(false), false},
		{"on", ptr(true), true},
		{"off again", ptr(false), false},
		{"default", nil, true},
	}
	for _, tt := range tests {
		in := Settings{TestEndpointEnabled: tt.in}
		if err := s.PutSettings(bg, in); err != nil {
			t.Fatal(err)
		}
		if tt.in != nil {
			*tt.in = !*tt.in // the caller's pointer is not kept
		}
		for where, store := range map[string]*FileStore{"served": s, "reopened": reopen(t, path)} {
			got, err := store.Settings(bg)
			if err != nil {
				t.Fatal(err)
			}
			if got.TestEndpointOn() != tt.want || (got.TestEndpointEnabled == nil) != (tt.in == nil) {
				t.Errorf("%s: %s: Settings = %+v, want test endpoint on %v", tt.name, where, got, tt.want)
			}
		}
	}
	if data := readFile(t, path); bytes.Contains(data, []byte("settings")) {
		t.Errorf("default settings are written out:\n%s", data)
	}
	if _, err := reopen(t, path).GetToken(bg, "a"); err != nil {
		t.Errorf("PutSettings lost the tokens: %v", err)
	}
}

// TestFileStoreManagementRefusesBadFile: no management write goes over a
// file that does not parse, nor runs once its context is done.
func TestFileStoreManagementRefusesBadFile(t *testing.T) {
	t.Parallel()
	calls := []struct {
		name string
		call func(t *testing.T, s *FileStore, ctx context.Context) error
	}{
		{"RevokeToken", func(t *testing.T, s *FileStore, ctx context.Context) error {
			_, err := s.RevokeToken(ctx, "a", baseTime)
			return err
		}},
		{"RevokeUserTokens", func(t *testing.T, s *FileStore, ctx context.Context) error {
			_, err := s.RevokeUserTokens(ctx, "alice", baseTime)
			return err
		}},
		{"RotateToken", func(t *testing.T, s *FileStore, ctx context.Context) error {
			next := tokenAt(t, "next", "alice", baseTime)
			_, err := s.RotateToken(ctx, "a", next, baseTime)
			return err
		}},
		{"PutUser", func(t *testing.T, s *FileStore, ctx context.Context) error { return s.PutUser(ctx, "alice", User{}) }},
		{"PutSettings", func(t *testing.T, s *FileStore, ctx context.Context) error { return s.PutSettings(ctx, Settings{}) }},
		{"CreateToken", func(t *testing.T, s *FileStore, ctx context.Context) error {
			return s.CreateToken(ctx, tokenAt(t, "next", "alice", baseTime))
		}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			if err := os.WriteFile(path, docBytes(t, tokenAt(t, "a", "alice", baseTime)), 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := openTestStore(t, path)

			done, cancel := context.WithCancel(bg)
			cancel()
			before := readFile(t, path)
			if err := c.call(t, s, done); !errors.Is(err, context.Canceled) {
				t.Errorf("with a cancelled context: error %v, want context.Canceled", err)
			}
			if !bytes.Equal(readFile(t, path), before) {
				t.Error("a call with a cancelled context changed the file")
			}

			corrupt := []byte(`{"version": 1, "tokens": [` + tokenJSON("a", HashSecret("secret-of-a"), ""))
			replaceFile(t, path, corrupt)
			err := c.call(t, s, bg)
			if err == nil || !strings.Contains(err.Error(), "not writing over it") {
				t.Errorf("on a corrupt file: error %v, want a refusal", err)
			}
			if got := readFile(t, path); !bytes.Equal(got, corrupt) {
				t.Errorf("the corrupt file was changed to:\n%s", got)
			}
			if _, err := s.GetToken(bg, "a"); err != nil {
				t.Errorf("the last good token is no longer served: %v", err)
			}
		})
	}
}

// TestFileStoreManagementConcurrent runs every management method at once
// with outside edits of the file and request-path reads. Run with -race.
func TestFileStoreManagementConcurrent(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	writeDoc(t, path, fileDocument{Tokens: []*Token{ptr(tokenAt(t, "base", "alice", baseTime))}})
	s, _ := openTestStore(t, path)

	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 10 {
				tok, _ := newTestToken(t, fmt.Sprintf("user%d", w))
				if err := s.CreateToken(bg, tok); err != nil {
					t.Error(err)
					return
				}
				next, _ := newTestToken(t, fmt.Sprintf("user%d", w))
				if _, err := s.RotateToken(bg, tok.ID, next, time.Now().Add(time.Hour)); err != nil {
					t.Error(err)
					return
				}
				if _, err := s.RevokeToken(bg, next.ID, time.Now()); err != nil {
					t.Error(err)
					return
				}
				if err := s.PutUser(bg, fmt.Sprintf("user%d", w), User{Groups: []string{fmt.Sprint(i)}}); err != nil {
					t.Error(err)
					return
				}
				if err := s.PutSettings(bg, Settings{TestEndpointEnabled: ptr(i%2 == 0)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			list, _ := s.ListTokens(bg)
			for _, tok := range list {
				tok.LastIPs = append(tok.LastIPs, "x")
				if tok.Expires != nil {
					*tok.Expires = time.Time{}
				}
			}
			users, _ := s.ListUsers(bg)
			for _, u := range users {
				if len(u.Groups) > 0 {
					u.Groups[0] = "mutated"
				}
			}
			_, _ = s.LookupBasic(bg, "user0")
			if tok, err := s.LookupToken(bg, DigestOf("secret-of-base")); err != nil || tok.Expires != nil {
				t.Errorf("base token served as %+v, %v", tok, err)
				return
			}
		}
	})
	wg.Wait()
	close(stop)
	readers.Wait()

	n, err := s.RevokeUserTokens(bg, "user0", time.Now())
	if err != nil || n != 10 {
		t.Errorf("RevokeUserTokens(user0) = %d, %v; want the 10 rotated-away tokens", n, err)
	}
	list, _ := reopen(t, path).ListTokens(bg)
	if len(list) != 1+4*10*2 {
		t.Errorf("%d tokens stored, want %d", len(list), 1+4*10*2)
	}
	users, _ := reopen(t, path).ListUsers(bg)
	for w := range 4 {
		if u := users[fmt.Sprintf("user%d", w)]; !slices.Equal(u.Groups, []string{"9"}) {
			t.Errorf("user%d groups %q, want [9]", w, u.Groups)
		}
	}
}

// A config (re)loaded while the file is corrupt is refused, even though
// the running config's store keeps serving the last good contents.
func TestAcquireRefusesCorruptFileOfOpenStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(path, []byte(`{"version": 1, "tokens": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Type: TypeFile, Path: path}
	running, err := Acquire(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer Release(cfg)
	if err := os.WriteFile(path, []byte(`{"version": 1, "tokens": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(cfg, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Acquire of a corrupt file = %v, want an error naming %s", err, path)
	}
	// The refused Acquire gave its reference back: one Release closes the
	// running store, and a new Acquire opens afresh.
	if _, err := running.ListTokens(context.Background()); err != nil {
		t.Errorf("running store stopped serving: %v", err)
	}
	if err := os.WriteFile(path, []byte(`{"version": 1, "tokens": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := Acquire(cfg, nil)
	if err != nil {
		t.Fatalf("Acquire after the file was fixed: %v", err)
	}
	if again != running {
		t.Error("a second Acquire opened a new store instead of sharing")
	}
	Release(cfg)
}

// The store writes its file a token at a time (encode), but the file must
// stay what json.MarshalIndent made of the whole document: the format, and
// the diffs of those who keep the file in version control.
func TestFileEncodeMatchesMarshalIndent(t *testing.T) {
	t.Parallel()
	off := false
	full := validToken("full", "alice")
	full.Name = "<ci> & \"deploy\""
	full.Expires = ptr(time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC))
	full.Revoked = ptr(time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	full.AllowedIPs = []string{"10.0.0.0/8", "::1"}
	full.RequiredHeaders = map[string]string{"X-Team": "blue", "X-Env": "prod"}
	full.LastUsed = ptr(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC))
	full.LastIPs = []string{"10.1.2.3"}
	plain := validToken("plain", "bob")
	for name, doc := range map[string]fileDocument{
		"empty":     {Version: 1},
		"no tokens": {Version: 1, Tokens: []*Token{}},
		"null user": {Version: 1, Users: map[string]*User{"carol": nil}},
		"everything": {
			Version:  1,
			Users:    map[string]*User{"alice": {Groups: []string{"dev", "ops"}}, "bob": {Disabled: true}},
			Tokens:   []*Token{&full, &plain},
			Settings: Settings{TestEndpointEnabled: &off},
		},
	} {
		want, err := json.MarshalIndent(&doc, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, '\n')
		var got bytes.Buffer
		if err := doc.encode(&got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: encode wrote\n%s\nwant (json.MarshalIndent)\n%s", name, got.Bytes(), want)
		}
	}
}

// A write whose reread finds the file as the store last wrote it works on
// the serving snapshot instead of decoding the file again. The tokens it
// changes must be copies: requests read the snapshot's without a lock.
func TestFileWriteCopiesSharedTokens(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, b := tokenAt(t, "a", "alice", baseTime), tokenAt(t, "b", "bob", baseTime)
	writeDoc(t, path, fileDocument{Tokens: []*Token{&a, &b}})
	s := reopen(t, path)
	// A first write, so that the file is the store's own.
	if err := s.PutUser(context.Background(), "alice", User{Groups: []string{"dev"}}); err != nil {
		t.Fatal(err)
	}
	before := s.current.Load()
	s.RecordUse("a", baseTime.Add(time.Hour), netip.MustParseAddr("192.0.2.7"))
	s.flushUses()
	after := s.current.Load()
	if before.byID["a"].LastUsed != nil {
		t.Error("the flush changed the token of the snapshot that requests were reading")
	}
	if got := after.byID["a"]; got.LastUsed == nil || !got.LastUsed.Equal(baseTime.Add(time.Hour)) {
		t.Errorf("after the flush, token a's last use is %v", got.LastUsed)
	}
	if after.byID["b"] != before.byID["b"] {
		t.Error("the flush copied token b, which it did not change")
	}
	if after.users["alice"] != before.users["alice"] || after.users["alice"].JoinedGroups() != "dev" {
		t.Error("the flush did not keep user alice as it was")
	}
	// What is on disk is what a fresh open reads.
	if got, err := reopen(t, path).GetToken(context.Background(), "a"); err != nil || got.LastUsed == nil ||
		!slices.Equal(got.LastIPs, []string{"192.0.2.7"}) {
		t.Errorf("reopened: token a = %+v, %v", got, err)
	}
}

// The poll saw a corrupt file and kept serving the last good contents: a
// write must not take those contents for the file's and write over it.
func TestFileWriteAfterCorruptPoll(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a := tokenAt(t, "a", "alice", baseTime)
	writeDoc(t, path, fileDocument{Tokens: []*Token{&a}})
	s := reopen(t, path)
	corrupt := []byte(`{"version": 1, "tokens": [`)
	if err := os.WriteFile(path, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	s.reloadIfChanged()
	if err := s.CreateToken(context.Background(), tokenAt(t, "b", "alice", baseTime)); err == nil {
		t.Fatal("CreateToken wrote over a corrupt file")
	}
	if got := readFile(t, path); !bytes.Equal(got, corrupt) {
		t.Errorf("the corrupt file was changed to\n%s", got)
	}
}

// Check reports the file as a fresh open would, whatever the store serves.
func TestFileCheck(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a := tokenAt(t, "a", "alice", baseTime)
	writeDoc(t, path, fileDocument{Tokens: []*Token{&a}})
	good := readFile(t, path)
	s := reopen(t, path)
	if err := s.Check(); err != nil {
		t.Fatalf("Check of the loaded file: %v", err)
	}
	replaceFile(t, path, []byte(`{"version": 1, "tokens": [`))
	if err := s.Check(); err == nil || !strings.Contains(err.Error(), "invalid JSON") {
		t.Fatalf("Check of a corrupt file: %v", err)
	}
	replaceFile(t, path, good)
	if err := s.Check(); err != nil {
		t.Fatalf("Check of the loaded contents again: %v", err)
	}
}
