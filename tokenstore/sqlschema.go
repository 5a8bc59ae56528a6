package tokenstore

import (
	"context"
	"database/sql"
	"fmt"

	"go.uber.org/zap"
)

// The SQL stores' schema. Every table is prefixed api_token_auth_, so that
// the store can share a database (and a PostgreSQL schema) with other
// applications, and every row is keyed by its realm, so that the realms of
// many Caddy configs can share one database.
//
// The schema is versioned: api_token_auth_schema_version holds the
// version of the last migration applied, and Open applies the missing
// ones in one transaction. A database whose version is newer than this
// code knows is refused rather than misread or "downgraded".

// schemaVersion is the schema version this code writes: the number of
// migrations.
const schemaVersion = 3

// pgMigrationLock is the key of the PostgreSQL advisory lock that
// serialises migrations, so that several servers starting at once against
// one database do not race to create the same tables. ("apitoken" in
// ASCII.)
const pgMigrationLock int64 = 0x6170_6974_6f6b_656e

// migration is one step of the schema: each dialect's own SQL, then, for
// a step that must rewrite rows with Go's logic (re-keying lockout rows,
// say), code, run in the same transaction.
type migration struct {
	sqlite   []string
	postgres []string
	code     func(ctx context.Context, s *SQLStore, tx *sql.Tx) error
}

// migrations[i] takes the schema from version i to version i+1. Append
// only: a released migration never changes.
var migrations = []migration{
	{
		// Version 1: tokens, users and settings.
		//
		// seq orders tokens created in the same second, as the file
		// store's file order does. digest is the SHA-256 of a sha256
		// token's secret, the request path's key; it is NULL for slow
		// (bcrypt, argon2id) hashes, which are salted and found by user
		// instead. allowed_ips, required_headers, last_ips and
		// user_groups are JSON. SQLite keeps times as RFC 3339 text in
		// UTC with nine fractional digits, whose text order is their time
		// order.
		sqlite: []string{
			`CREATE TABLE api_token_auth_tokens (
				seq INTEGER PRIMARY KEY AUTOINCREMENT,
				realm TEXT NOT NULL,
				id TEXT NOT NULL,
				user_name TEXT NOT NULL,
				name TEXT NOT NULL DEFAULT '',
				scope TEXT NOT NULL,
				hash TEXT NOT NULL,
				digest BLOB,
				created TEXT NOT NULL,
				expires TEXT,
				revoked TEXT,
				allowed_ips TEXT NOT NULL DEFAULT '[]',
				required_headers TEXT NOT NULL DEFAULT '{}',
				last_used TEXT,
				last_ips TEXT NOT NULL DEFAULT '[]',
				UNIQUE (realm, id),
				UNIQUE (realm, digest)
			)`,
			`CREATE INDEX api_token_auth_tokens_user ON api_token_auth_tokens (realm, user_name)`,
			`CREATE TABLE api_token_auth_users (
				realm TEXT NOT NULL,
				name TEXT NOT NULL,
				user_groups TEXT NOT NULL DEFAULT '[]',
				disabled INTEGER NOT NULL DEFAULT 0,
				PRIMARY KEY (realm, name)
			)`,
			`CREATE TABLE api_token_auth_settings (
				realm TEXT PRIMARY KEY,
				test_endpoint_enabled INTEGER
			)`,
		},
		postgres: []string{
			`CREATE TABLE api_token_auth_tokens (
				seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
				realm TEXT NOT NULL,
				id TEXT NOT NULL,
				user_name TEXT NOT NULL,
				name TEXT NOT NULL DEFAULT '',
				scope TEXT NOT NULL,
				hash TEXT NOT NULL,
				digest BYTEA,
				created TIMESTAMPTZ NOT NULL,
				expires TIMESTAMPTZ,
				revoked TIMESTAMPTZ,
				allowed_ips TEXT NOT NULL DEFAULT '[]',
				required_headers TEXT NOT NULL DEFAULT '{}',
				last_used TIMESTAMPTZ,
				last_ips TEXT NOT NULL DEFAULT '[]',
				UNIQUE (realm, id),
				UNIQUE (realm, digest)
			)`,
			`CREATE INDEX api_token_auth_tokens_user ON api_token_auth_tokens (realm, user_name)`,
			`CREATE TABLE api_token_auth_users (
				realm TEXT NOT NULL,
				name TEXT NOT NULL,
				user_groups TEXT NOT NULL DEFAULT '[]',
				disabled BOOLEAN NOT NULL DEFAULT FALSE,
				PRIMARY KEY (realm, name)
			)`,
			`CREATE TABLE api_token_auth_settings (
				realm TEXT PRIMARY KEY,
				test_endpoint_enabled BOOLEAN
			)`,
		},
	},
	{
		// Version 2: lockout state shared by the servers using the
		// database (see sqllockout.go). Keys and user names are bytes:
		// they come from requests and may hold anything, NUL included.
		// lockout_counts are runs of consecutive failures; lockouts are
		// CAPTCHA challenges (kind "challenge") and IP bans (kind "ban");
		// until is NULL for a challenge that never lapses.
		sqlite: []string{
			`CREATE TABLE api_token_auth_lockout_counts (
				realm TEXT NOT NULL,
				lockout_key BLOB NOT NULL,
				user_name BLOB NOT NULL,
				n INTEGER NOT NULL,
				last TEXT NOT NULL,
				PRIMARY KEY (realm, lockout_key)
			)`,
			`CREATE INDEX api_token_auth_lockout_counts_user ON api_token_auth_lockout_counts (realm, user_name)`,
			`CREATE TABLE api_token_auth_lockouts (
				realm TEXT NOT NULL,
				kind TEXT NOT NULL,
				lockout_key BLOB NOT NULL,
				user_name BLOB NOT NULL,
				ip TEXT NOT NULL,
				started TEXT NOT NULL,
				until TEXT,
				PRIMARY KEY (realm, kind, lockout_key)
			)`,
		},
		postgres: []string{
			`CREATE TABLE api_token_auth_lockout_counts (
				realm TEXT NOT NULL,
				lockout_key BYTEA NOT NULL,
				user_name BYTEA NOT NULL,
				n INTEGER NOT NULL,
				last TIMESTAMPTZ NOT NULL,
				PRIMARY KEY (realm, lockout_key)
			)`,
			`CREATE INDEX api_token_auth_lockout_counts_user ON api_token_auth_lockout_counts (realm, user_name)`,
			`CREATE TABLE api_token_auth_lockouts (
				realm TEXT NOT NULL,
				kind TEXT NOT NULL,
				lockout_key BYTEA NOT NULL,
				user_name BYTEA NOT NULL,
				ip TEXT NOT NULL,
				started TIMESTAMPTZ NOT NULL,
				until TIMESTAMPTZ,
				PRIMARY KEY (realm, kind, lockout_key)
			)`,
		},
	},
	{
		// Version 3: secret keys that servers sharing the database share,
		// one per realm and name (the unlock page's sealing key, say);
		// see SharedKey. Written once, by the first server that needs
		// one; never rotated by the plugin.
		sqlite: []string{
			`CREATE TABLE api_token_auth_keys (
				realm TEXT NOT NULL,
				name TEXT NOT NULL,
				value BLOB NOT NULL,
				PRIMARY KEY (realm, name)
			)`,
		},
		postgres: []string{
			`CREATE TABLE api_token_auth_keys (
				realm TEXT NOT NULL,
				name TEXT NOT NULL,
				value BYTEA NOT NULL,
				PRIMARY KEY (realm, name)
			)`,
		},
	},
}

// migrate brings the database's schema up to schemaVersion in one
// transaction. It is idempotent. On PostgreSQL the transaction first takes
// an advisory lock, so that servers starting at once migrate one after the
// other; on SQLite the transaction is IMMEDIATE (see sqliteDSN), which
// takes the database's write lock at once.
func (s *SQLStore) migrate(ctx context.Context) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return s.unavailable("migrating the schema", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if s.dialect == TypePostgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, pgMigrationLock); err != nil {
			return s.unavailable("locking the schema for migration", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS api_token_auth_schema_version (version INTEGER NOT NULL)`); err != nil {
		return s.unavailable("migrating the schema", err)
	}
	var have sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(version) FROM api_token_auth_schema_version`).Scan(&have); err != nil {
		return s.unavailable("reading the schema version", err)
	}
	switch {
	case have.Int64 > schemaVersion:
		return fmt.Errorf("token store %s: schema version %d is newer than this plugin understands (%d); upgrade the plugin",
			s.where, have.Int64, schemaVersion)
	case have.Valid && have.Int64 == schemaVersion:
		return tx.Commit()
	}
	for v := int(have.Int64); v < schemaVersion; v++ {
		steps := migrations[v].sqlite
		if s.dialect == TypePostgres {
			steps = migrations[v].postgres
		}
		for _, stmt := range steps {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("token store %s: migrating the schema to version %d: %w", s.where, v+1, err)
			}
		}
		if code := migrations[v].code; code != nil {
			if err := code(ctx, s, tx); err != nil {
				return fmt.Errorf("token store %s: migrating the schema to version %d: %w", s.where, v+1, err)
			}
		}
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM api_token_auth_schema_version`); err != nil {
		return s.unavailable("migrating the schema", err)
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO api_token_auth_schema_version (version) VALUES (?)`), schemaVersion); err != nil {
		return s.unavailable("migrating the schema", err)
	}
	if err := tx.Commit(); err != nil {
		return s.unavailable("migrating the schema", err)
	}
	if have.Int64 > 0 {
		s.logger.Info("token store schema migrated", zap.Int64("from", have.Int64), zap.Int("to", schemaVersion))
	}
	return nil
}
