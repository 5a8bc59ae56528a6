// Package testdb gives tests a PostgreSQL database of their own.
//
// The server is named by $APITOKEN_TEST_PG_DSN. scripts/test.sh (and so CI)
// starts a throwaway cluster with scripts/pg-test-cluster.sh and sets it; to
// run `go test` directly, start one yourself:
//
//	eval "$(scripts/pg-test-cluster.sh | sed 's/^/export /')"
//	export APITOKEN_TEST_PG_DSN=$PG_DSN
//	go test ./...
//	scripts/pg-test-cluster.sh stop "$PG_DIR"
//
// A test that needs PostgreSQL and finds no DSN fails; it never skips, here
// or in CI: a skipped test would count as a passing one.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN is the environment variable that names the test server.
const EnvDSN = "APITOKEN_TEST_PG_DSN"

// PostgresDSN returns $APITOKEN_TEST_PG_DSN, the DSN of the server the
// PostgreSQL tests use. Without it the test fails at once.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(EnvDSN)
	if dsn == "" {
		t.Fatalf("%s is not set, and this test needs a PostgreSQL server: "+
			"scripts/test.sh starts a throwaway cluster and sets it; "+
			"to run go test directly, start one with scripts/pg-test-cluster.sh "+
			"and export %s=<the PG_DSN it prints>", EnvDSN, EnvDSN)
	}
	return dsn
}

// FreshPostgresDatabase creates an empty database for this test on the
// server of PostgresDSN, drops it (closing any connection still open to it)
// when the test and its subtests are done, and returns a DSN naming it.
//
// A database rather than a schema, so that tests running in parallel see
// neither each other's tables nor each other's LISTEN/NOTIFY messages
// (channels are per database).
func FreshPostgresDatabase(t testing.TB) string {
	t.Helper()
	base := PostgresDSN(t)
	name := databaseName(t.Name())

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("testdb: connecting to %s: %v", redact(base), err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testdb: creating database %s: %v", name, err)
	}
	t.Cleanup(func() { dropDatabase(t, base, name) })

	dsn, err := withDatabase(base, name)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	return dsn
}

func dropDatabase(t testing.TB, base, name string) {
	t.Helper()
	// Not t.Context(): it is canceled before cleanups run.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Errorf("testdb: connecting to %s to drop database %s: %v", redact(base), name, err)
		return
	}
	defer conn.Close(ctx)
	// FORCE (PostgreSQL 13+) ends the sessions that the test left open.
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("testdb: dropping database %s: %v", name, err)
	}
}

var notIdent = regexp.MustCompile(`[^a-z0-9]+`)

// databaseName makes a unique, valid database name that still says which
// test made it: apitoken_t_<test name, shortened>_<random>.
func databaseName(testName string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	slug := strings.Trim(notIdent.ReplaceAllString(strings.ToLower(testName), "_"), "_")
	const maxSlug = 63 - len("apitoken_t__") - 12 // PostgreSQL names: 63 bytes
	if len(slug) > maxSlug {
		slug = slug[:maxSlug]
	}
	return "apitoken_t_" + slug + "_" + hex.EncodeToString(b[:])
}

// withDatabase returns dsn, a URL or a keyword/value DSN, with its database
// replaced by name.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parsing %s: %v", EnvDSN, err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// Keyword/value form: a later keyword overrides an earlier one.
	return dsn + " dbname=" + name, nil
}

// redact hides a URL DSN's password, for messages.
func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			return u.String()
		}
	}
	if strings.Contains(dsn, "password") {
		return "(a DSN with a password)"
	}
	return dsn
}
