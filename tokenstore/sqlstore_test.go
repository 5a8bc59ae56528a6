package tokenstore

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/internal/testdb"
	"github.com/caddyserver/caddy/v2"
)

// sqlOpener opens the test's SQL database for realm and returns the
// store, or the error of Open.
type sqlOpener func(realm string) (*SQLStore, error)

// forEachSQL runs test once per SQL dialect, each on a fresh database.
func forEachSQL(t *testing.T, test func(t *testing.T, open sqlOpener)) {
	t.Helper()
	t.Run(TypeSQLite, func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "tokens.db")
		test(t, func(realm string) (*SQLStore, error) {
			s, err := openSQLite(path, realm, nil, noAutoFlush)
			if err == nil {
				t.Cleanup(func() { s.Close() })
			}
			return s, err
		})
	})
	t.Run(TypePostgres, func(t *testing.T) {
		t.Parallel()
		dsn := testdb.FreshPostgresDatabase(t)
		test(t, func(realm string) (*SQLStore, error) {
			s, err := openPostgres(dsn, realm, nil, noAutoFlush)
			if err == nil {
				t.Cleanup(func() { s.Close() })
			}
			return s, err
		})
	})
}

func TestSQLMigrationsIdempotent(t *testing.T) {
	forEachSQL(t, func(t *testing.T, open sqlOpener) {
		first, err := open("r")
		if err != nil {
			t.Fatal(err)
		}
		mustCreate(t, first, tokenAt(t, "a", "alice", baseTime))
		for range 2 {
			again, err := open("r")
			if err != nil {
				t.Fatalf("opening a migrated database: %v", err)
			}
			if _, err := again.GetToken(bg, "a"); err != nil {
				t.Errorf("the token is gone after reopening: %v", err)
			}
		}
		var rows, version int
		if err := first.db.QueryRow(`SELECT COUNT(*), MAX(version) FROM api_token_auth_schema_version`).Scan(&rows, &version); err != nil {
			t.Fatal(err)
		}
		if rows != 1 || version != schemaVersion {
			t.Errorf("schema_version has %d rows, version %d; want 1 row, %d", rows, version, schemaVersion)
		}
	})
}

func TestSQLNewerSchemaRefused(t *testing.T) {
	forEachSQL(t, func(t *testing.T, open sqlOpener) {
		s, err := open("r")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.db.Exec(`UPDATE api_token_auth_schema_version SET version = 99`); err != nil {
			t.Fatal(err)
		}
		_, err = open("r")
		want := fmt.Sprintf("schema version 99 is newer than this plugin understands (%d); upgrade the plugin", schemaVersion)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("opening a newer schema: %v, want an error containing %q", err, want)
		}
		if errors.Is(err, ErrUnavailable) {
			t.Errorf("a newer schema is reported as an outage: %v", err)
		}
	})
}

// TestSQLConcurrentOpen: servers starting at once against a new database
// all migrate it safely (the PostgreSQL advisory lock; SQLite's write
// lock).
func TestSQLConcurrentOpen(t *testing.T) {
	forEachSQL(t, func(t *testing.T, open sqlOpener) {
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		stores := make([]*SQLStore, n)
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				stores[i], errs[i] = open(fmt.Sprint("realm", i))
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("Open %d: %v", i, err)
			}
		}
		if t.Failed() {
			return
		}
		for i, s := range stores {
			mustCreate(t, s, tokenAt(t, fmt.Sprint("t", i), "alice", baseTime))
		}
		var version int
		if err := stores[0].db.QueryRow(`SELECT MAX(version) FROM api_token_auth_schema_version`).Scan(&version); err != nil || version != schemaVersion {
			t.Errorf("schema version %d, %v", version, err)
		}
	})
}

// TestSQLUnavailable: when the database cannot be asked, every method's
// error wraps ErrUnavailable (the handler's 503).
func TestSQLUnavailable(t *testing.T) {
	forEachSQL(t, func(t *testing.T, open sqlOpener) {
		s, err := open("r")
		if err != nil {
			t.Fatal(err)
		}
		mustCreate(t, s, tokenAt(t, "a", "alice", baseTime))
		s.db.Close()
		next, _ := newTestToken(t, "alice")
		calls := map[string]func() error{
			"LookupToken": func() error { _, err := s.LookupToken(bg, DigestOf("secret-of-a")); return err },
			"LookupUser":  func() error { _, err := s.LookupUser(bg, "alice"); return err },
			"Settings":    func() error { _, err := s.Settings(bg); return err },
			"LookupBasic": func() error { _, err := s.LookupBasic(bg, "alice"); return err },
			"SlowHashModel": func() error {
				_, err := s.SlowHashModel(bg)
				return err
			},
			"CreateToken":      func() error { return s.CreateToken(bg, next) },
			"ListTokens":       func() error { _, err := s.ListTokens(bg); return err },
			"GetToken":         func() error { _, err := s.GetToken(bg, "a"); return err },
			"RevokeToken":      func() error { _, err := s.RevokeToken(bg, "a", baseTime); return err },
			"RevokeUserTokens": func() error { _, err := s.RevokeUserTokens(bg, "alice", baseTime); return err },
			"RotateToken":      func() error { _, err := s.RotateToken(bg, "a", next, baseTime); return err },
			"ListUsers":        func() error { _, err := s.ListUsers(bg); return err },
			"PutUser":          func() error { return s.PutUser(bg, "alice", User{}) },
			"PutSettings":      func() error { return s.PutSettings(bg, Settings{}) },
		}
		for name, call := range calls {
			if err := call(); !errors.Is(err, ErrUnavailable) {
				t.Errorf("%s on a closed database: %v, want ErrUnavailable", name, err)
			}
		}
		// Uses recorded meanwhile are kept for the next flush.
		s.RecordUse("a", baseTime, netip.MustParseAddr("192.0.2.1"))
		if err := s.flushUses(); !errors.Is(err, ErrUnavailable) {
			t.Errorf("flushUses on a closed database: %v, want ErrUnavailable", err)
		}
		s.usesMu.Lock()
		kept := len(s.pending)
		s.usesMu.Unlock()
		if kept != 1 {
			t.Errorf("%d pending uses kept after a failed flush, want 1", kept)
		}
	})
}

// TestPostgresUnreachable: a server that cannot be reached fails Open
// with ErrUnavailable, and the message keeps the password out.
func TestPostgresUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	dsn := "postgres://caddy:hunter2@" + addr + "/tokens?sslmode=disable&connect_timeout=2"
	start := time.Now()
	_, err = OpenPostgres(dsn, "r", nil)
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("OpenPostgres on a closed port: %v, want ErrUnavailable", err)
	}
	if err != nil && strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error shows the password: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("OpenPostgres took %v to fail", d)
	}
	_, err = OpenPostgres("postgres://caddy:hunter2@[::1/x", "r", nil)
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("OpenPostgres of a malformed DSN: %v, want an error without the password", err)
	}
}

func TestSQLiteFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.db")
	s, err := OpenSQLite(path, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Kind() != TypeSQLite || s.Realm() != "default" {
		t.Errorf("Kind, Realm = %q, %q; want sqlite, default", s.Kind(), s.Realm())
	}
	mustCreate(t, s, tokenAt(t, "a", "alice", baseTime))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("database file mode %v, want -rw-------", fi.Mode())
	}
	var mode string
	var timeout, fk int
	if err := s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	if err := s.db.QueryRow(`PRAGMA busy_timeout`).Scan(&timeout); err != nil || timeout != 5000 {
		t.Errorf("busy_timeout = %d, %v; want 5000", timeout, err)
	}
	if err := s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v; want 1", fk, err)
	}

	// Times round-trip exactly, to the nanosecond.
	at := time.Date(2031, 2, 3, 4, 5, 6, 123456789, time.FixedZone("X", 7200))
	if _, err := s.RevokeToken(bg, "a", at); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetToken(bg, "a")
	if err != nil || got.Revoked == nil || !got.Revoked.Equal(at) || got.Revoked.Location() != time.UTC {
		t.Errorf("revoked = %v, %v; want %v in UTC", got.Revoked, err, at)
	}

	// A path with characters that mean something in a URI.
	odd := filepath.Join(t.TempDir(), "a?b#c%d.db")
	o, err := OpenSQLite(odd, "x", nil)
	if err != nil {
		t.Fatal(err)
	}
	o.Close()
	if _, err := os.Stat(odd); err != nil {
		t.Errorf("the database was not created at %q: %v", odd, err)
	}
}

func TestSQLRebind(t *testing.T) {
	t.Parallel()
	pg := &SQLStore{dialect: TypePostgres}
	lite := &SQLStore{dialect: TypeSQLite}
	const q = `SELECT a FROM t WHERE x = ? AND y IN (?, ?)`
	if got, want := pg.q(q), `SELECT a FROM t WHERE x = $1 AND y IN ($2, $3)`; got != want {
		t.Errorf("postgres q = %q, want %q", got, want)
	}
	if got := lite.q(q); got != q {
		t.Errorf("sqlite q = %q, want it unchanged", got)
	}
}

func TestConfigSQL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		spec    string
		want    Config
		wantStr string
	}{
		{"postgres://caddy:hunter2@db:5432/tokens", Config{Type: TypePostgres, DSN: "postgres://caddy:hunter2@db:5432/tokens"}, "postgres:postgres://caddy:xxxxx@db:5432/tokens"},
		{"postgresql://db/tokens?password=hunter2&sslmode=require", Config{Type: TypePostgres, DSN: "postgresql://db/tokens?password=hunter2&sslmode=require"}, "postgres:postgresql://db/tokens?password=xxxxx&sslmode=require"},
		{"postgres:host=db password='hunter 2' user=caddy", Config{Type: TypePostgres, DSN: "host=db password='hunter 2' user=caddy"}, "postgres:host=db password=xxxxx user=caddy"},
		{"sqlite:tokens.db", Config{Type: TypeSQLite, Path: "tokens.db"}, "sqlite:tokens.db"},
	}
	for _, tt := range tests {
		got, err := ParseSpec(tt.spec)
		if err != nil || got != tt.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", tt.spec, got, err, tt.want)
		}
		if s := got.String(); s != tt.wantStr {
			t.Errorf("String() = %q, want %q", s, tt.wantStr)
		}
	}

	for _, tt := range []struct {
		c    Config
		want string
	}{
		{Config{Type: TypeSQLite}, "store sqlite: path is required"},
		{Config{Type: TypePostgres}, "store postgres: dsn is required"},
		{Config{Type: TypePostgres, DSN: "postgres://u:hunter2@db/x", Path: "p"}, `store postgres postgres://u:xxxxx@db/x: path "p" is only for file and sqlite`},
		{Config{Type: TypeSQLite, Path: "t.db", DSN: "x"}, "store sqlite t.db: dsn is only for postgres"},
		{Config{Type: "mysql"}, `store: unknown type "mysql" (want file, sqlite or postgres)`},
	} {
		if err := tt.c.Validate(); err == nil || err.Error() != tt.want {
			t.Errorf("Validate(%+v) = %v, want %q", tt.c, err, tt.want)
		}
	}

	repl := caddy.NewReplacer()
	repl.Set("test.dsn", "postgres://db/x")
	c := Config{Type: TypePostgres, DSN: "{test.dsn}", Realm: "r"}.Expand(repl)
	if c.DSN != "postgres://db/x" || c.Realm != "r" {
		t.Errorf("Expand = %+v", c)
	}

	// SQL stores are pooled per realm; a file is one store whatever the realm.
	key := func(c Config) string {
		k, err := poolKey(c)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	for _, c := range []Config{{Type: TypeSQLite, Path: "t.db"}, {Type: TypePostgres, DSN: "postgres://db/x"}} {
		a, b := c, c
		a.Realm, b.Realm = "a", "b"
		if key(a) == key(b) {
			t.Errorf("%s: realms a and b share the pool key %q", c.Type, key(a))
		}
		c.Realm = ""
		d := c
		d.Realm = "default"
		if key(c) != key(d) {
			t.Errorf("%s: no realm and realm default have different pool keys", c.Type)
		}
	}
	if key(Config{Type: TypeFile, Path: "t.json", Realm: "a"}) != key(Config{Type: TypeFile, Path: "t.json", Realm: "b"}) {
		t.Error("file: realms sharing a file have different pool keys")
	}
}

// TestAcquireSQLRealms: two realms in one SQLite database are two stores.
func TestAcquireSQLRealms(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.db")
	a := Config{Type: TypeSQLite, Path: path, Realm: "a"}
	b := Config{Type: TypeSQLite, Path: path, Realm: "b"}
	sa, err := Acquire(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer Release(a)
	sb, err := Acquire(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer Release(b)
	mustCreate(t, sa, tokenAt(t, "x", "alice", baseTime))
	if _, err := sb.GetToken(bg, "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("realm b sees realm a's token: %v", err)
	}
	again, err := Acquire(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer Release(a)
	if again != sa {
		t.Error("acquiring realm a twice gave two stores")
	}
}
