// Package tokenstore keeps API tokens, their users and the realm's run-time
// settings, and defines the token format. Stores hold only a hash of a
// token, never the token itself: its SHA-256, or for a credential imported
// from another system, its bcrypt or argon2id hash.
package tokenstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// ErrNotFound is returned when a token or user does not exist.
var ErrNotFound = errors.New("not found")

// ErrUnavailable wraps every error that means the store could not be asked
// (as opposed to answering "no"). The handler turns it into a 503: a store
// outage fails closed.
var ErrUnavailable = errors.New("token store unavailable")

// Store is where a realm's tokens, users and settings live. The read
// methods are on every request's path: implementations answer them from
// memory whenever they can.
type Store interface {
	// Kind names the implementation ("file", "sqlite", "postgres").
	Kind() string

	// LookupToken returns the token whose secret has digest d, or
	// ErrNotFound. The result is shared: callers must not modify it.
	LookupToken(ctx context.Context, d Digest) (*Token, error)

	// LookupUser returns the user's record, or nil when the user is not
	// listed. The result is shared: callers must not modify it.
	LookupUser(ctx context.Context, name string) (*User, error)

	// Settings returns the run-time settings.
	Settings(ctx context.Context) (Settings, error)

	// RecordUse notes that token id authenticated a request at at from ip.
	// It never blocks on I/O: stores write uses in batches.
	RecordUse(id string, at time.Time, ip netip.Addr)

	// LookupBasic returns the tokens of user whose stored hash is a slow
	// password hash (bcrypt, argon2id): credentials imported from other
	// systems, usable with Basic authentication only, where the username
	// narrows the candidates. The results are shared: do not modify them.
	LookupBasic(ctx context.Context, user string) ([]*Token, error)

	// SlowHashModel returns the stored slow password hash (bcrypt,
	// argon2id) that a failed Basic attempt for a user without one spends
	// a comparison with (SlowVerifier.FakeVerify), so that it takes as
	// long as a known user's: one whose parameters are the most common in
	// the realm (see the function SlowHashModel). It returns "" when no
	// token has a slow hash: then a failed attempt has nothing to hide and
	// pays nothing.
	SlowHashModel(ctx context.Context) (string, error)

	// The methods below manage the store for the admin API and the CLI.
	// They are never on the request path. Each returns only once the
	// change is durably stored.

	// CreateToken durably adds t, which must not exist yet.
	CreateToken(ctx context.Context, t Token) error

	// ListTokens returns copies of every token, oldest first.
	ListTokens(ctx context.Context) ([]Token, error)

	// GetToken returns a copy of token id, or ErrNotFound.
	GetToken(ctx context.Context, id string) (Token, error)

	// RevokeToken marks token id revoked at at (a token already revoked
	// keeps its earlier time) and returns it, or ErrNotFound.
	RevokeToken(ctx context.Context, id string, at time.Time) (Token, error)

	// RevokeUserTokens revokes every token of user not yet revoked and
	// returns how many it revoked.
	RevokeUserTokens(ctx context.Context, user string, at time.Time) (int, error)

	// RotateToken adds next and, in the same change, makes token id expire
	// at oldExpires at the latest. It returns the old token as changed, or
	// ErrNotFound.
	RotateToken(ctx context.Context, id string, next Token, oldExpires time.Time) (Token, error)

	// ListUsers returns every listed user.
	ListUsers(ctx context.Context) (map[string]User, error)

	// PutUser creates or replaces a user's record.
	PutUser(ctx context.Context, name string, u User) error

	// PutSettings replaces the run-time settings.
	PutSettings(ctx context.Context, s Settings) error

	// Close writes what is pending and releases the store's resources.
	Close() error
}

// Config says which store a realm uses. In a Caddyfile it is written
// `store file <path>`, `store sqlite <path>` or `store postgres <dsn>`;
// placeholders such as {env.TOKENS_FILE} or {env.PG_DSN} are expanded when
// the handler is provisioned.
type Config struct {
	// Type of store: "file" (a JSON file of users and tokens, the
	// default), "sqlite" (an embedded SQLite database) or "postgres" (a
	// PostgreSQL database that several Caddy servers can share).
	Type string `json:"type"`

	// Path of the store file or SQLite database (type file or sqlite).
	// Relative paths are relative to Caddy's working directory.
	Path string `json:"path,omitempty"`

	// DSN of the PostgreSQL database (type postgres), as a URL
	// (postgres://user:password@host:5432/db?sslmode=verify-full) or in
	// key=value form. Keep the password out of the config with a
	// placeholder such as {env.PG_DSN}.
	DSN string `json:"dsn,omitempty"`

	// Realm whose tokens the store holds. SQL databases keep many realms
	// side by side, every row keyed by its realm; a file holds one realm.
	// Set by the handler from its own realm, never from JSON; empty
	// means "default".
	Realm string `json:"-"`

	// CacheTTL is how long an SQL store may trust a cached look-up (the
	// handler's cache_ttl); 0 means it caches nothing and asks the
	// database every time (the CLI's case). Set by the handler, never
	// from JSON. The file store always answers from memory and ignores it.
	CacheTTL time.Duration `json:"-"`
}

// Store types.
const (
	TypeFile     = "file"
	TypeSQLite   = "sqlite"
	TypePostgres = "postgres"
)

// defaultRealm is the realm of a Config that names none (the handler's
// default realm).
const defaultRealm = "default"

// realm returns the realm the config's SQL store keys its rows by.
func (c Config) realm() string {
	if c.Realm == "" {
		return defaultRealm
	}
	return c.Realm
}

// ParseSpec reads the CLI's `--store` form: `file:<path>`,
// `sqlite:<path>` or `postgres:<dsn>`. A PostgreSQL URL
// (postgres://… or postgresql://…) is accepted on its own as well.
func ParseSpec(spec string) (Config, error) {
	if strings.HasPrefix(spec, "postgres://") || strings.HasPrefix(spec, "postgresql://") {
		cfg := Config{Type: TypePostgres, DSN: spec}
		return cfg, cfg.Validate()
	}
	typ, rest, ok := strings.Cut(spec, ":")
	if !ok || rest == "" {
		return Config{}, fmt.Errorf("store %q: want file:<path>, sqlite:<path> or postgres:<dsn>", redactSpec(spec))
	}
	cfg := Config{Type: typ, Path: rest}
	if typ == TypePostgres {
		cfg = Config{Type: typ, DSN: rest}
	}
	return cfg, cfg.Validate()
}

// redactSpec hides a password that a malformed spec may hold.
func redactSpec(spec string) string {
	if strings.Contains(spec, "@") || strings.Contains(spec, "password") {
		return redactDSN(spec)
	}
	return spec
}

// Validate checks the configuration without touching the store. It runs
// before placeholders are expanded, so it checks only what is there.
func (c Config) Validate() error {
	switch c.Type {
	case TypeFile, TypeSQLite:
		if c.Path == "" {
			return fmt.Errorf("store %s: path is required", c.Type)
		}
		if c.DSN != "" {
			return fmt.Errorf("store %s %s: dsn is only for postgres", c.Type, c.Path)
		}
		return nil
	case TypePostgres:
		if c.DSN == "" {
			return fmt.Errorf("store postgres: dsn is required")
		}
		if c.Path != "" {
			return fmt.Errorf("store postgres %s: path %q is only for file and sqlite", redactDSN(c.DSN), c.Path)
		}
		return nil
	case "":
		return fmt.Errorf("store: type is required (file, sqlite or postgres)")
	}
	return fmt.Errorf("store: unknown type %q (want file, sqlite or postgres)", c.Type)
}

// Expand replaces known placeholders ({env.*}, {file.*}, …) in the config.
func (c Config) Expand(repl *caddy.Replacer) Config {
	c.Path = repl.ReplaceKnown(c.Path, "")
	c.DSN = repl.ReplaceKnown(c.DSN, "")
	return c
}

// String identifies the store for logs and error messages. A PostgreSQL
// DSN is shown with its password hidden.
func (c Config) String() string {
	if c.Type == TypePostgres {
		return c.Type + ":" + redactDSN(c.DSN)
	}
	return c.Type + ":" + c.Path
}

// dsnPassword matches a password given as a key=value pair or a URL query
// parameter.
var dsnPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)`)

// dsnUserinfo matches the password of a URL's user information.
var dsnUserinfo = regexp.MustCompile(`(?i)^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@]*@`)

// redactDSN returns dsn with its password hidden, for logs and messages.
// It works on text, so that a DSN too malformed to parse is hidden too.
func redactDSN(dsn string) string {
	dsn = dsnUserinfo.ReplaceAllString(dsn, "${1}xxxxx@")
	return dsnPassword.ReplaceAllString(dsn, "${1}xxxxx")
}

// Open opens the store described by c. Each open store watches its
// backing data; Close it when done.
func Open(c Config, logger *zap.Logger) (Store, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	switch c.Type {
	case TypeFile:
		return OpenFile(c.Path, logger)
	case TypeSQLite:
		return openSQLiteWith(c.Path, c.realm(), logger, sqlOptions{flushEvery: defaultFlushEvery, cacheTTL: c.CacheTTL})
	case TypePostgres:
		return openPostgresWith(c.DSN, c.realm(), logger, sqlOptions{flushEvery: defaultFlushEvery, cacheTTL: c.CacheTTL})
	}
	return nil, fmt.Errorf("store: unknown type %q", c.Type)
}

// stores holds the open stores of every loaded config, keyed by what they
// open, so that a `caddy reload` keeps the loaded tokens, pending last-use
// records and file watchers, and so that realms sharing a file share one
// store. SQL stores are keyed by realm too: each realm's store reads and
// writes only its own rows. The cache TTL is not part of the key, so that a
// reload keeps the cache warm: the config acquiring a store last sets its
// TTL (a store first opened without a cache stays without one).
var stores = caddy.NewUsagePool()

type pooledStore struct{ Store }

func (p pooledStore) Destruct() error { return p.Close() }

// Acquire opens the store described by c or, if a loaded config already
// has it open, shares that one. Each Acquire must be paired with a Release.
func Acquire(c Config, logger *zap.Logger) (Store, error) {
	key, err := poolKey(c)
	if err != nil {
		return nil, err
	}
	v, loaded, err := stores.LoadOrNew(key, func() (caddy.Destructor, error) {
		s, err := Open(c, logger)
		if err != nil {
			return nil, err
		}
		return pooledStore{s}, nil
	})
	if err != nil {
		return nil, err
	}
	s := v.(pooledStore).Store
	if sq, ok := s.(*SQLStore); ok && loaded {
		sq.SetCacheTTL(c.CacheTTL)
	}
	// A store already open (the running config's) keeps serving its last
	// good contents when its file goes bad; a new config must still be
	// refused then, as it would be by a fresh open, so that `caddy reload`
	// keeps the running config.
	if checker, ok := s.(interface{ Check() error }); ok && loaded {
		if err := checker.Check(); err != nil {
			_, _ = stores.Delete(key)
			return nil, err
		}
	}
	return s, nil
}

// Release gives back a store taken with Acquire; the last release closes it.
func Release(c Config) error {
	key, err := poolKey(c)
	if err != nil {
		return err
	}
	_, err = stores.Delete(key)
	return err
}

func poolKey(c Config) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	switch c.Type {
	case TypePostgres:
		return c.Type + ":" + c.DSN + "#realm=" + c.realm(), nil
	}
	abs, err := filepath.Abs(c.Path)
	if err != nil {
		return "", fmt.Errorf("store %s: %v", c, err)
	}
	if c.Type == TypeSQLite {
		return c.Type + ":" + abs + "#realm=" + c.realm(), nil
	}
	return c.Type + ":" + abs, nil
}
