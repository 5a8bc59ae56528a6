package tokenstore

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/zap"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// SQL store timings.
const (
	// sqliteBusyTimeout is how long an SQLite statement waits for another
	// connection's (or process's) write lock before failing.
	sqliteBusyTimeout = 5 * time.Second
	// sqlOpenTimeout bounds connecting and migrating at Open.
	sqlOpenTimeout = 30 * time.Second
)

// sqliteTimeLayout is how the SQLite store writes times: RFC 3339 in UTC
// with all nine fractional digits, so that times round-trip exactly and
// compare correctly as text.
const sqliteTimeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// SQLStore keeps one realm's tokens, users and settings in an SQL
// database: SQLite (embedded, pure Go) or PostgreSQL (shared by several
// Caddy servers). Many realms can share one database; every row carries
// its realm and a store sees only its own.
//
// Opened with a cache TTL (Config.CacheTTL, the handler's cache_ttl),
// the request path's reads (LookupToken, LookupUser, LookupBasic,
// SlowHashModel, Settings) are answered from a cache (see cache.go) and
// trusted for at most that long. Writes through the store clear the cache
// at once. Writes by other servers clear it too: a PostgreSQL store
// LISTENs for the notification every write sends (see sqlwatch.go), and an
// SQLite store polls the database's data_version every second, which
// changes when another connection commits. Without a cache TTL every read
// asks the database.
//
// Errors that mean the database could not be asked wrap ErrUnavailable.
// Management writes are committed before they return. Last-use records
// are gathered in memory and written in one transaction every few
// seconds, and on Close.
type SQLStore struct {
	db      *sql.DB
	dialect string // TypeSQLite or TypePostgres
	realm   string
	where   string // the store for messages, without a password
	logger  *zap.Logger

	// cache answers the request path's reads; nil without a cache TTL.
	cache *lookupCache
	// queryHook, if set (by tests), is called before each read the
	// cache could have answered goes to the database.
	queryHook func()
	// lockoutListeners are told of lockout changes notified by other
	// servers.
	lockoutListeners lockoutListeners

	// Watching for other servers' writes (only with a cache).
	watchCancel context.CancelFunc
	watchDone   chan struct{} // closed when the PostgreSQL listener ends
	pgConfig    *pgx.ConnConfig
	listens     atomic.Int64  // PostgreSQL: LISTENs that succeeded
	listenPID   atomic.Uint32 // PostgreSQL: the listener's backend, 0 while down
	pollEvery   time.Duration // SQLite: how often data_version is read
	// lastNotice is the payload of the last notification received for
	// the store's realm.
	lastNotice atomic.Value
	// SQLite: the connection that reads data_version (and writes last-use
	// records, so that they do not look like another's commit), and the
	// last value read, both guarded by watchMu.
	watchMu     sync.Mutex
	watchConn   *sql.Conn
	dataVersion int64

	listenBackoff, listenBackoffMax time.Duration

	// useBatch gathers last-use records between writes; it provides
	// RecordUse.
	useBatch

	flushEvery time.Duration
	stop       chan struct{}
	done       chan struct{}
	closeOnce  sync.Once
	closeErr   error
}

// OpenSQLite opens (creating it if need be, readable by its owner only)
// the SQLite database at path, brings its schema up to date, and returns
// the store of realm in it. The store has no look-up cache; Open gives it
// one when the Config has a CacheTTL.
func OpenSQLite(path, realm string, logger *zap.Logger) (*SQLStore, error) {
	return openSQLite(path, realm, logger, defaultFlushEvery)
}

// sqlOptions are an SQL store's tunables. flushEvery must be set; a zero
// cacheTTL means no cache, and any other zero field its default.
type sqlOptions struct {
	flushEvery time.Duration
	// cacheTTL: 0 means no cache (and no watching for other servers).
	cacheTTL time.Duration
	// negativeMax bounds the cached "not found" answers.
	negativeMax int
	// now is the cache's clock.
	now func() time.Time
	// pollEvery is how often an SQLite store reads data_version.
	pollEvery time.Duration
	// listenBackoff and listenBackoffMax are the first and the longest
	// waits before a PostgreSQL listener reconnects.
	listenBackoff, listenBackoffMax time.Duration
	// queryHook is the store's queryHook.
	queryHook func()
}

// SQL watch defaults.
const (
	defaultDataVersionPoll  = time.Second
	defaultListenBackoff    = 100 * time.Millisecond
	defaultListenBackoffMax = 30 * time.Second
)

func openSQLite(path, realm string, logger *zap.Logger, flushEvery time.Duration) (*SQLStore, error) {
	return openSQLiteWith(path, realm, logger, sqlOptions{flushEvery: flushEvery})
}

func openSQLiteWith(path, realm string, logger *zap.Logger, opts sqlOptions) (*SQLStore, error) {
	where := TypeSQLite + ":" + path
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("token store %s: %v", where, err)
	}
	// SQLite would create the file with the umask's mode; the store holds
	// token hashes, so create it owner-only first. Its -wal and -shm files
	// get the same mode from SQLite.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("token store %s: %v", where, err)
	}
	f.Close()
	db, err := sql.Open("sqlite", sqliteDSN(abs))
	if err != nil {
		return nil, fmt.Errorf("token store %s: %v", where, err)
	}
	return openSQL(db, nil, TypeSQLite, where, realm, logger, opts)
}

// sqliteDSN is the modernc.org/sqlite data source for the database at
// the absolute path abs: a wait for locks rather than an immediate
// SQLITE_BUSY, write-ahead logging (readers never wait for the writer),
// foreign keys enforced, and transactions that take the write lock when
// they begin (BEGIN IMMEDIATE), so that two read-modify-write
// transactions cannot deadlock upgrading their locks.
func sqliteDSN(abs string) string {
	u := url.URL{Path: filepath.ToSlash(abs)}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout("+strconv.Itoa(int(sqliteBusyTimeout/time.Millisecond))+")")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate")
	return "file:" + u.EscapedPath() + "?" + q.Encode()
}

// OpenPostgres connects to the PostgreSQL database at dsn, brings its
// schema up to date, and returns the store of realm in it. The store has
// no look-up cache; Open gives it one when the Config has a CacheTTL.
func OpenPostgres(dsn, realm string, logger *zap.Logger) (*SQLStore, error) {
	return openPostgres(dsn, realm, logger, defaultFlushEvery)
}

func openPostgres(dsn, realm string, logger *zap.Logger, flushEvery time.Duration) (*SQLStore, error) {
	return openPostgresWith(dsn, realm, logger, sqlOptions{flushEvery: flushEvery})
}

func openPostgresWith(dsn, realm string, logger *zap.Logger, opts sqlOptions) (*SQLStore, error) {
	where := TypePostgres + ":" + redactDSN(dsn)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx hides the password in its parse errors.
		return nil, fmt.Errorf("token store %s: invalid dsn: %v", where, err)
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return openSQL(db, cfg, TypePostgres, where, realm, logger, opts)
}

func openSQL(db *sql.DB, pgConfig *pgx.ConnConfig, dialect, where, realm string, logger *zap.Logger, opts sqlOptions) (*SQLStore, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if realm == "" {
		realm = defaultRealm
	}
	s := &SQLStore{
		db:         db,
		dialect:    dialect,
		realm:      realm,
		where:      where,
		logger:     logger,
		flushEvery: opts.flushEvery,
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		queryHook:  opts.queryHook,
		pgConfig:   pgConfig,
		pollEvery:  cmp.Or(opts.pollEvery, defaultDataVersionPoll),

		listenBackoff:    cmp.Or(opts.listenBackoff, defaultListenBackoff),
		listenBackoffMax: cmp.Or(opts.listenBackoffMax, defaultListenBackoffMax),
	}
	ctx, cancel := context.WithTimeout(context.Background(), sqlOpenTimeout)
	defer cancel()
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	if opts.cacheTTL > 0 {
		s.cache = newLookupCache(opts.cacheTTL, opts.negativeMax, opts.now)
		if err := s.startWatching(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	go s.loop()
	return s, nil
}

// SetCacheTTL changes how long the store trusts a cached look-up (the
// handler's cache_ttl, when a new config shares the store). A store
// opened without a cache stays without one.
func (s *SQLStore) SetCacheTTL(ttl time.Duration) { s.cache.setTTL(ttl) }

// CacheStats returns how many of the request path's reads the cache has
// answered (hits) and how many it has passed to the database (misses),
// for metrics. A store without a cache has neither.
func (s *SQLStore) CacheStats() (hits, misses int64) {
	if s.cache == nil {
		return 0, 0
	}
	return s.cache.hits.Load(), s.cache.misses.Load()
}

// hook calls the test hook before a read that the cache could answer.
func (s *SQLStore) hook() {
	if s.queryHook != nil {
		s.queryHook()
	}
}

// Kind implements Store.
func (s *SQLStore) Kind() string { return s.dialect }

// Realm returns the realm whose rows the store reads and writes.
func (s *SQLStore) Realm() string { return s.realm }

// q rewrites a query written with ? placeholders for the dialect:
// PostgreSQL numbers them ($1, $2, …). Queries never hold a literal '?'.
func (s *SQLStore) q(query string) string {
	if s.dialect != TypePostgres {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// forUpdate locks the rows a transaction reads before changing them. On
// SQLite every write transaction holds the database's write lock already.
func (s *SQLStore) forUpdate() string {
	if s.dialect == TypePostgres {
		return " FOR UPDATE"
	}
	return ""
}

// unavailable wraps err, a failure to ask the database, in
// ErrUnavailable.
func (s *SQLStore) unavailable(doing string, err error) error {
	return fmt.Errorf("%w: %s: %s: %w", ErrUnavailable, s.where, doing, err)
}

// timeArg is t as the dialect stores it; nil is NULL.
func (s *SQLStore) timeArg(t *time.Time) any {
	if t == nil {
		return nil
	}
	return s.timeValue(*t)
}

func (s *SQLStore) timeValue(t time.Time) any {
	if s.dialect == TypeSQLite {
		return t.UTC().Format(sqliteTimeLayout)
	}
	return t.UTC()
}

// nullTime scans a time as either dialect returns it: a time.Time, or
// the SQLite store's RFC 3339 text; NULL is nil.
type nullTime struct{ t *time.Time }

func (n *nullTime) Scan(src any) error {
	var t time.Time
	switch v := src.(type) {
	case nil:
		n.t = nil
		return nil
	case time.Time:
		t = v
	case string:
		var err error
		if t, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return fmt.Errorf("invalid time %q: %v", v, err)
		}
	case []byte:
		var err error
		if t, err = time.Parse(time.RFC3339Nano, string(v)); err != nil {
			return fmt.Errorf("invalid time %q: %v", v, err)
		}
	default:
		return fmt.Errorf("cannot read a time from %T", src)
	}
	t = t.UTC()
	n.t = &t
	return nil
}

// tokenColumns are the columns scanToken reads, in its order.
const tokenColumns = `id, user_name, name, scope, hash, created, expires, revoked,
	allowed_ips, required_headers, last_used, last_ips`

// rowScanner is *sql.Row or *sql.Rows.
type rowScanner interface{ Scan(dest ...any) error }

// scanToken reads one token row and prepares it. A row that does not
// prepare is refused, as a file with a bad record is.
func scanToken(row rowScanner) (*Token, error) {
	var (
		t                                  Token
		scope                              string
		created, expires, revoked, lastUse nullTime
		allowedIPs, headers, lastIPs       string
	)
	err := row.Scan(&t.ID, &t.User, &t.Name, &scope, &t.Hash, &created, &expires, &revoked,
		&allowedIPs, &headers, &lastUse, &lastIPs)
	if err != nil {
		return nil, err
	}
	t.Scope = Scope(scope)
	if created.t != nil {
		t.Created = *created.t
	}
	t.Expires, t.Revoked, t.LastUsed = expires.t, revoked.t, lastUse.t
	if err := decodeJSONColumn(allowedIPs, &t.AllowedIPs); err != nil {
		return nil, badRecord{fmt.Errorf("token %s: allowed_ips: %v", t.ID, err)}
	}
	if err := decodeJSONColumn(headers, &t.RequiredHeaders); err != nil {
		return nil, badRecord{fmt.Errorf("token %s: required_headers: %v", t.ID, err)}
	}
	if err := decodeJSONColumn(lastIPs, &t.LastIPs); err != nil {
		return nil, badRecord{fmt.Errorf("token %s: last_ips: %v", t.ID, err)}
	}
	if len(t.AllowedIPs) == 0 {
		t.AllowedIPs = nil
	}
	if len(t.RequiredHeaders) == 0 {
		t.RequiredHeaders = nil
	}
	if len(t.LastIPs) == 0 {
		t.LastIPs = nil
	}
	if err := t.Prepare(); err != nil {
		return nil, badRecord{err}
	}
	return &t, nil
}

func decodeJSONColumn(text string, v any) error {
	if text == "" {
		return nil
	}
	return json.Unmarshal([]byte(text), v)
}

// jsonColumn encodes a list or map column; empty is "[]" or "{}".
func jsonColumn[T any](v T, empty string) string {
	data, err := json.Marshal(v)
	if err != nil || string(data) == "null" {
		return empty
	}
	return string(data)
}

// digestArg is the token's digest column: NULL for a slow hash.
func digestArg(t *Token) any {
	if t.kind != kindSHA256 {
		return nil
	}
	return t.digest[:]
}

// queryTokens runs a query selecting tokenColumns and reads every row.
func (s *SQLStore) queryTokens(ctx context.Context, doing, query string, args ...any) ([]*Token, error) {
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, s.unavailable(doing, err)
	}
	defer rows.Close()
	var out []*Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, s.rowError(doing, err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, s.unavailable(doing, err)
	}
	return out, nil
}

// badRecord is a row whose contents do not make a valid record, as
// opposed to a failure to read it.
type badRecord struct{ err error }

func (e badRecord) Error() string { return e.err.Error() }

// rowError is the error for a row that could not be read: a bad record
// (refused, naming the store), or a failure to read it (unavailable).
func (s *SQLStore) rowError(doing string, err error) error {
	var bad badRecord
	if errors.As(err, &bad) {
		return fmt.Errorf("token store %s: %s: %v", s.where, doing, bad.err)
	}
	return s.unavailable(doing, err)
}

// Cache keys of the request path's reads.
const (
	keyToken    = "t:"
	keyUser     = "u:"
	keyBasic    = "b:"
	keySlow     = "slow"
	keySettings = "settings"
)

// LookupToken implements Store.
func (s *SQLStore) LookupToken(ctx context.Context, d Digest) (*Token, error) {
	return cachedLookup(ctx, s, keyToken+string(d[:]), func(ctx context.Context) (*Token, error) {
		return s.lookupToken(ctx, d)
	}, func(_ *Token, err error) bool { return err != nil })
}

func (s *SQLStore) lookupToken(ctx context.Context, d Digest) (*Token, error) {
	s.hook()
	row := s.db.QueryRowContext(ctx, s.q(`SELECT `+tokenColumns+` FROM api_token_auth_tokens WHERE realm = ? AND digest = ?`),
		s.realm, d[:])
	t, err := scanToken(row)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, s.rowError("looking up a token", err)
	}
	return t, nil
}

// LookupUser implements Store.
func (s *SQLStore) LookupUser(ctx context.Context, name string) (*User, error) {
	return cachedLookup(ctx, s, keyUser+name, func(ctx context.Context) (*User, error) {
		return s.lookupUser(ctx, name)
	}, func(u *User, _ error) bool { return u == nil })
}

func (s *SQLStore) lookupUser(ctx context.Context, name string) (*User, error) {
	s.hook()
	var groups string
	var u User
	err := s.db.QueryRowContext(ctx, s.q(`SELECT user_groups, disabled FROM api_token_auth_users WHERE realm = ? AND name = ?`),
		s.realm, name).Scan(&groups, &u.Disabled)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, s.unavailable("looking up a user", err)
	}
	if err := decodeJSONColumn(groups, &u.Groups); err != nil {
		return nil, fmt.Errorf("token store %s: user %s: groups: %v", s.where, name, err)
	}
	if len(u.Groups) == 0 {
		u.Groups = nil
	}
	u.Prepare()
	return &u, nil
}

// Settings implements Store.
func (s *SQLStore) Settings(ctx context.Context) (Settings, error) {
	return cachedLookup(ctx, s, keySettings, s.settings, func(Settings, error) bool { return false })
}

func (s *SQLStore) settings(ctx context.Context) (Settings, error) {
	s.hook()
	var on sql.NullBool
	err := s.db.QueryRowContext(ctx, s.q(`SELECT test_endpoint_enabled FROM api_token_auth_settings WHERE realm = ?`),
		s.realm).Scan(&on)
	if errors.Is(err, sql.ErrNoRows) {
		return Settings{}, nil
	}
	if err != nil {
		return Settings{}, s.unavailable("reading the settings", err)
	}
	var out Settings
	if on.Valid {
		out.TestEndpointEnabled = &on.Bool
	}
	return out, nil
}

// LookupBasic implements Store. Its key, the username of a Basic request,
// is chosen by the client: an empty answer is cached as a "not found", in
// the bounded set.
func (s *SQLStore) LookupBasic(ctx context.Context, user string) ([]*Token, error) {
	return cachedLookup(ctx, s, keyBasic+user, func(ctx context.Context) ([]*Token, error) {
		return s.lookupBasic(ctx, user)
	}, func(list []*Token, _ error) bool { return len(list) == 0 })
}

func (s *SQLStore) lookupBasic(ctx context.Context, user string) ([]*Token, error) {
	s.hook()
	return s.queryTokens(ctx, "looking up slow-hash tokens",
		`SELECT `+tokenColumns+` FROM api_token_auth_tokens WHERE realm = ? AND user_name = ? AND digest IS NULL ORDER BY seq`,
		s.realm, user)
}

// SlowHashModel implements Store.
func (s *SQLStore) SlowHashModel(ctx context.Context) (string, error) {
	return cachedLookup(ctx, s, keySlow, s.slowHashModel, func(string, error) bool { return false })
}

func (s *SQLStore) slowHashModel(ctx context.Context) (string, error) {
	s.hook()
	slow, err := s.queryTokens(ctx, "looking for slow-hash tokens",
		`SELECT `+tokenColumns+` FROM api_token_auth_tokens WHERE realm = ? AND digest IS NULL ORDER BY seq`, s.realm)
	if err != nil {
		return "", err
	}
	return SlowHashModel(hashesOf(slow)), nil
}

// ListTokens implements Store.
func (s *SQLStore) ListTokens(ctx context.Context) ([]Token, error) {
	list, err := s.queryTokens(ctx, "listing tokens",
		`SELECT `+tokenColumns+` FROM api_token_auth_tokens WHERE realm = ? ORDER BY created, seq`, s.realm)
	if err != nil {
		return nil, err
	}
	out := make([]Token, len(list))
	for i, t := range list {
		out[i] = *t
	}
	return out, nil
}

// getToken reads token id with q (the database or a transaction).
func (s *SQLStore) getToken(ctx context.Context, q querier, id string, lock bool) (*Token, error) {
	query := `SELECT ` + tokenColumns + ` FROM api_token_auth_tokens WHERE realm = ? AND id = ?`
	if lock {
		query += s.forUpdate()
	}
	t, err := scanToken(q.QueryRowContext(ctx, s.q(query), s.realm, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, tokenNotFound(id)
	}
	if err != nil {
		return nil, s.rowError("reading token "+id, err)
	}
	return t, nil
}

// beginner is *sql.DB or *sql.Conn.
type beginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// querier is *sql.DB or *sql.Tx.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// GetToken implements Store.
func (s *SQLStore) GetToken(ctx context.Context, id string) (Token, error) {
	t, err := s.getToken(ctx, s.db, id, false)
	if err != nil {
		return Token{}, err
	}
	return *t, nil
}

// inTx runs fn in a transaction and commits it; any error rolls it back.
func (s *SQLStore) inTx(ctx context.Context, doing string, fn func(tx *sql.Tx) error) error {
	return s.inTxOn(ctx, s.db, doing, fn)
}

func (s *SQLStore) inTxOn(ctx context.Context, b beginner, doing string, fn func(tx *sql.Tx) error) error {
	tx, err := b.BeginTx(ctx, nil)
	if err != nil {
		return s.unavailable(doing, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return s.unavailable(doing, err)
	}
	return nil
}

// insertToken adds the prepared token t, refusing an id or a sha256
// hash that the realm already has.
func (s *SQLStore) insertToken(ctx context.Context, tx *sql.Tx, t *Token) error {
	var one int
	err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM api_token_auth_tokens WHERE realm = ? AND id = ?`), s.realm, t.ID).Scan(&one)
	switch {
	case err == nil:
		return fmt.Errorf("token %s already exists", t.ID)
	case !errors.Is(err, sql.ErrNoRows):
		return s.unavailable("adding token "+t.ID, err)
	}
	if d := digestArg(t); d != nil {
		err := tx.QueryRowContext(ctx, s.q(`SELECT 1 FROM api_token_auth_tokens WHERE realm = ? AND digest = ?`), s.realm, d).Scan(&one)
		switch {
		case err == nil:
			return fmt.Errorf("token %s has the same hash as another token", t.ID)
		case !errors.Is(err, sql.ErrNoRows):
			return s.unavailable("adding token "+t.ID, err)
		}
	}
	_, err = tx.ExecContext(ctx, s.q(`INSERT INTO api_token_auth_tokens (realm, `+tokenColumns+`, digest)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		s.realm, t.ID, t.User, t.Name, string(t.Scope), t.Hash,
		s.timeValue(t.Created), s.timeArg(t.Expires), s.timeArg(t.Revoked),
		jsonColumn(t.AllowedIPs, "[]"), jsonColumn(t.RequiredHeaders, "{}"),
		s.timeArg(t.LastUsed), jsonColumn(t.LastIPs, "[]"), digestArg(t))
	if isUniqueViolation(err) {
		// Added by another server since the checks above.
		return fmt.Errorf("token %s already exists, or has the same hash as another token", t.ID)
	}
	if err != nil {
		return s.unavailable("adding token "+t.ID, err)
	}
	return nil
}

// isUniqueViolation reports whether err is a UNIQUE or PRIMARY KEY
// constraint failure.
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "23505"
	}
	var liteErr *sqlite.Error
	if errors.As(err, &liteErr) {
		code := liteErr.Code()
		return code == sqlite3.SQLITE_CONSTRAINT_UNIQUE || code == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// CreateToken implements Store.
func (s *SQLStore) CreateToken(ctx context.Context, t Token) error {
	if err := t.Prepare(); err != nil {
		return invalidError{err}
	}
	return s.write(ctx, "adding token "+t.ID, func(tx *sql.Tx) error {
		if err := s.insertToken(ctx, tx, &t); err != nil {
			return err
		}
		return s.notify(ctx, tx, "token", t.ID)
	})
}

// RevokeToken implements Store.
func (s *SQLStore) RevokeToken(ctx context.Context, id string, at time.Time) (Token, error) {
	var out Token
	err := s.write(ctx, "revoking token "+id, func(tx *sql.Tx) error {
		t, err := s.getToken(ctx, tx, id, true)
		if err != nil {
			return err
		}
		if revoke(t, at) {
			_, err := tx.ExecContext(ctx, s.q(`UPDATE api_token_auth_tokens SET revoked = ? WHERE realm = ? AND id = ?`),
				s.timeArg(t.Revoked), s.realm, id)
			if err != nil {
				return s.unavailable("revoking token "+id, err)
			}
			if err := s.notify(ctx, tx, "token", id); err != nil {
				return err
			}
		}
		out = *t
		return nil
	})
	if err != nil {
		return Token{}, err
	}
	return out, nil
}

// RevokeUserTokens implements Store. A user with no tokens has none to
// revoke: 0, not ErrNotFound. Tokens revoked already by at keep their
// time and are not counted; a revocation scheduled later is brought
// forward and counted.
func (s *SQLStore) RevokeUserTokens(ctx context.Context, user string, at time.Time) (int, error) {
	var n int64
	err := s.write(ctx, "revoking the tokens of "+user, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q(`UPDATE api_token_auth_tokens SET revoked = ?
			WHERE realm = ? AND user_name = ? AND (revoked IS NULL OR revoked > ?)`),
			s.timeValue(at), s.realm, user, s.timeValue(at))
		if err != nil {
			return s.unavailable("revoking the tokens of "+user, err)
		}
		if n, err = res.RowsAffected(); err != nil {
			return s.unavailable("revoking the tokens of "+user, err)
		}
		if n == 0 {
			return nil
		}
		return s.notify(ctx, tx, "user_tokens", user)
	})
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

// RotateToken implements Store: the new token and the old one's new
// expiry are one transaction, so that no reader ever sees one without the
// other.
func (s *SQLStore) RotateToken(ctx context.Context, id string, next Token, oldExpires time.Time) (Token, error) {
	if err := next.Prepare(); err != nil {
		return Token{}, invalidError{err}
	}
	var out Token
	err := s.write(ctx, "rotating token "+id, func(tx *sql.Tx) error {
		old, err := s.getToken(ctx, tx, id, true)
		if err != nil {
			return err
		}
		if err := s.insertToken(ctx, tx, &next); err != nil {
			return err
		}
		if old.Expires == nil || oldExpires.Before(*old.Expires) {
			at := oldExpires.UTC()
			old.Expires = &at
			_, err := tx.ExecContext(ctx, s.q(`UPDATE api_token_auth_tokens SET expires = ? WHERE realm = ? AND id = ?`),
				s.timeArg(old.Expires), s.realm, id)
			if err != nil {
				return s.unavailable("rotating token "+id, err)
			}
		}
		if err := s.notify(ctx, tx, "token", id); err != nil {
			return err
		}
		out = *old
		return nil
	})
	if err != nil {
		return Token{}, err
	}
	return out, nil
}

// ListUsers implements Store.
func (s *SQLStore) ListUsers(ctx context.Context) (map[string]User, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT name, user_groups, disabled FROM api_token_auth_users WHERE realm = ?`), s.realm)
	if err != nil {
		return nil, s.unavailable("listing users", err)
	}
	defer rows.Close()
	out := make(map[string]User)
	for rows.Next() {
		var name, groups string
		var u User
		if err := rows.Scan(&name, &groups, &u.Disabled); err != nil {
			return nil, s.unavailable("listing users", err)
		}
		if err := decodeJSONColumn(groups, &u.Groups); err != nil {
			return nil, fmt.Errorf("token store %s: user %s: groups: %v", s.where, name, err)
		}
		if len(u.Groups) == 0 {
			u.Groups = nil
		}
		u.Prepare()
		out[name] = u
	}
	if err := rows.Err(); err != nil {
		return nil, s.unavailable("listing users", err)
	}
	return out, nil
}

// PutUser implements Store. The name must be non-empty and free of
// control characters, and every group a non-empty string; errors name the
// field and match ErrInvalid.
func (s *SQLStore) PutUser(ctx context.Context, name string, u User) error {
	if err := ValidateUser(name, u); err != nil {
		return err
	}
	return s.write(ctx, "storing user "+name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO api_token_auth_users (realm, name, user_groups, disabled) VALUES (?, ?, ?, ?)
			ON CONFLICT (realm, name) DO UPDATE SET user_groups = excluded.user_groups, disabled = excluded.disabled`),
			s.realm, name, jsonColumn(u.Groups, "[]"), u.Disabled)
		if err != nil {
			return s.unavailable("storing user "+name, err)
		}
		return s.notify(ctx, tx, "user", name)
	})
}

// PutSettings implements Store.
func (s *SQLStore) PutSettings(ctx context.Context, settings Settings) error {
	var on any
	if settings.TestEndpointEnabled != nil {
		on = *settings.TestEndpointEnabled
	}
	return s.write(ctx, "storing the settings", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO api_token_auth_settings (realm, test_endpoint_enabled) VALUES (?, ?)
			ON CONFLICT (realm) DO UPDATE SET test_endpoint_enabled = excluded.test_endpoint_enabled`),
			s.realm, on)
		if err != nil {
			return s.unavailable("storing the settings", err)
		}
		return s.notify(ctx, tx, "settings", "")
	})
}

func (s *SQLStore) loop() {
	defer close(s.done)
	flush := time.NewTicker(s.flushEvery)
	defer flush.Stop()
	var poll <-chan time.Time
	if s.cache != nil && s.dialect == TypeSQLite {
		ticker := time.NewTicker(s.pollEvery)
		defer ticker.Stop()
		poll = ticker.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-poll:
			s.pollDataVersion()
		case <-flush.C:
			if err := s.flushUses(); err != nil {
				s.logger.Error("writing token last-use records; will retry", zap.String("store", s.where), zap.Error(err))
			}
		}
	}
}

// flushUses writes the pending last-use records in one transaction. If
// that fails they are kept for the next try.
func (s *SQLStore) flushUses() error {
	uses := s.takeUses()
	if uses == nil {
		return nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), sqlOpenTimeout)
	defer cancel()
	// On SQLite, on the connection that watches data_version, whose own
	// commits do not change it: last-use records are no change to what
	// the cache holds.
	var on beginner = s.db
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if s.watchConn != nil {
		on = s.watchConn
	}
	err := s.inTxOn(ctx, on, "writing last-use records", func(tx *sql.Tx) error {
		for id, u := range uses {
			var lastUsed nullTime
			var lastIPs string
			err := tx.QueryRowContext(ctx, s.q(`SELECT last_used, last_ips FROM api_token_auth_tokens WHERE realm = ? AND id = ?`+s.forUpdate()),
				s.realm, id).Scan(&lastUsed, &lastIPs)
			if errors.Is(err, sql.ErrNoRows) {
				continue // deleted since
			}
			if err != nil {
				return s.unavailable("writing last-use records", err)
			}
			t := Token{LastUsed: lastUsed.t}
			if err := decodeJSONColumn(lastIPs, &t.LastIPs); err != nil {
				t.LastIPs = nil // rewritten whole below
			}
			u.applyTo(&t)
			_, err = tx.ExecContext(ctx, s.q(`UPDATE api_token_auth_tokens SET last_used = ?, last_ips = ? WHERE realm = ? AND id = ?`),
				s.timeArg(t.LastUsed), jsonColumn(t.LastIPs, "[]"), s.realm, id)
			if err != nil {
				return s.unavailable("writing last-use records", err)
			}
		}
		return nil
	})
	if err != nil {
		s.restoreUses(uses)
	}
	return err
}

// Close writes pending last-use records and closes the database.
func (s *SQLStore) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.stopWatching()
		flushErr := s.flushUses()
		if flushErr != nil {
			s.logger.Error("writing token last-use records at close; they are lost", zap.String("store", s.where), zap.Error(flushErr))
		}
		s.watchMu.Lock()
		if s.watchConn != nil {
			_ = s.watchConn.Close()
			s.watchConn = nil
		}
		s.watchMu.Unlock()
		s.closeErr = errors.Join(flushErr, s.db.Close())
	})
	return s.closeErr
}

// Interface guard
var _ Store = (*SQLStore)(nil)
