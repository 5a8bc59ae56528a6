package testdb

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestFreshPostgresDatabase uses a fresh database the way a store test
// would: connect, create a table, write and read it. Two parallel subtests
// make the same table, each in its own database.
func TestFreshPostgresDatabase(t *testing.T) {
	for i := range 2 {
		t.Run(fmt.Sprint("parallel", i), func(t *testing.T) {
			t.Parallel()
			dsn := FreshPostgresDatabase(t)
			ctx := t.Context()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			t.Cleanup(func() { conn.Close(context.Background()) })

			var db string
			if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(db, "apitoken_t_testfreshpostgresdatabase_parallel") {
				t.Errorf("current_database() = %q, want a fresh one named after the test", db)
			}

			if _, err := conn.Exec(ctx, "CREATE TABLE tokens (id text PRIMARY KEY, n int NOT NULL)"); err != nil {
				t.Fatalf("create table: %v", err)
			}
			if _, err := conn.Exec(ctx, "INSERT INTO tokens VALUES ($1, $2)", "tok", i); err != nil {
				t.Fatalf("insert: %v", err)
			}
			var n, count int
			if err := conn.QueryRow(ctx, "SELECT n, (SELECT count(*) FROM tokens) FROM tokens WHERE id = $1", "tok").Scan(&n, &count); err != nil {
				t.Fatalf("select: %v", err)
			}
			if n != i || count != 1 {
				t.Errorf("read n=%d with %d rows, want n=%d with 1 row", n, count, i)
			}
		})
	}
}

// TestFreshPostgresDatabaseDropped checks that the database is gone once
// its test is done, even with a connection the test left open.
func TestFreshPostgresDatabaseDropped(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("user", func(t *testing.T) {
		dsn := FreshPostgresDatabase(t)
		conn, err := pgx.Connect(t.Context(), dsn)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		// Left open on purpose: the drop must end it.
		if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
	})
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, PostgresDSN(t))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if name == "" || exists {
		t.Errorf("database %q still exists after its test", name)
	}
}

// recordingTB records how a helper ends a test, instead of ending it.
type recordingTB struct {
	testing.TB
	mu      sync.Mutex
	fatal   string
	skipped bool
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.fatal = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	runtime.Goexit()
}
func (r *recordingTB) Skip(...any)           { r.skip() }
func (r *recordingTB) Skipf(string, ...any)  { r.skip() }
func (r *recordingTB) SkipNow()              { r.skip() }
func (r *recordingTB) Fatal(args ...any)     { r.Fatalf("%s", fmt.Sprint(args...)) }
func (r *recordingTB) FailNow()              { r.Fatalf("FailNow") }
func (r *recordingTB) Name() string          { return "TestRecording" }
func (r *recordingTB) Cleanup(func())        {}
func (r *recordingTB) Errorf(string, ...any) {}
func (r *recordingTB) skip() {
	r.mu.Lock()
	r.skipped = true
	r.mu.Unlock()
	runtime.Goexit()
}

// TestNoDSNFails checks that without a DSN the helpers fail the test and
// never skip it, and say how to get a server.
func TestNoDSNFails(t *testing.T) {
	t.Setenv(EnvDSN, "")
	for name, helper := range map[string]func(testing.TB) string{
		"PostgresDSN":           PostgresDSN,
		"FreshPostgresDatabase": FreshPostgresDatabase,
	} {
		r := &recordingTB{TB: t}
		done := make(chan struct{})
		go func() {
			defer close(done)
			helper(r)
		}()
		<-done
		if r.skipped {
			t.Errorf("%s skipped the test; it must fail it", name)
		}
		if !strings.Contains(r.fatal, EnvDSN) || !strings.Contains(r.fatal, "scripts/test.sh") {
			t.Errorf("%s failed with %q; want a message naming %s and scripts/test.sh", name, r.fatal, EnvDSN)
		}
	}
}

func TestWithDatabase(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://postgres:pw@127.0.0.1:5432/apitoken_test?sslmode=disable", "postgres://postgres:pw@127.0.0.1:5432/x?sslmode=disable"},
		{"postgresql://u@h/", "postgresql://u@h/x"},
		{"host=127.0.0.1 port=5432 dbname=apitoken_test", "host=127.0.0.1 port=5432 dbname=apitoken_test dbname=x"},
	} {
		got, err := withDatabase(c.in, "x")
		if err != nil || got != c.want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	// The keyword/value form's last dbname wins.
	cfg, err := pgx.ParseConfig("host=127.0.0.1 dbname=apitoken_test dbname=x")
	if err != nil || cfg.Database != "x" {
		t.Errorf("ParseConfig: database %q, %v; want x", cfg.Database, err)
	}
}

func TestDatabaseName(t *testing.T) {
	long := databaseName("TestSomething/" + strings.Repeat("Very Long Subtest Name ", 10))
	short := databaseName("TestX")
	for _, n := range []string{long, short} {
		if len(n) > 63 || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
			t.Errorf("databaseName gave %q: not a plain identifier of at most 63 bytes", n)
		}
	}
	if !strings.HasPrefix(short, "apitoken_t_testx_") || short == databaseName("TestX") {
		t.Errorf("databaseName(TestX) = %q: want a unique name starting apitoken_t_testx_", short)
	}
}
