package admin

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

func migrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate --from <store> --to <store> [--realm <realm>] [--force]",
		Short: "Copies the users, tokens and settings of one store into another",
		Long: `
Copies a realm's users, tokens and settings from one store to another, for
instance from a file to PostgreSQL: file:<path>, sqlite:<path> or
postgres:<dsn> on either side. Tokens are copied whole: their hashes, so
that they keep working, and revoked and expired tokens, last use and last
client addresses too. The source is only read.

--realm (default: default) picks the realm on both sides; it matters to
SQLite and PostgreSQL, which keep many realms in one database. A file
holds one realm.

The target must be empty: no token, user or settings in the realm. With
--force, migrate adds to a target that is not: the source's users and
settings replace the target's, a token the target already has unchanged
is skipped, and the target's other tokens stay. A token whose id or hash
the target already has with other contents (revoked since, used since) is
a conflict, which migrate refuses before writing anything: stores do not
update tokens in place.

Users are written first, then tokens, oldest first, then the settings. If
the copy fails half way, the error says what was copied; running the same
command again with --force copies the rest.

Stop servers from changing the source while it is copied, or run migrate
again with --force afterwards. PostgreSQL keeps times to the microsecond:
the nanoseconds of a file or SQLite store are rounded away.

Run the server against the new store by changing its Caddyfile's store
line ('store postgres {env.PG_DSN}').
`,
		Args: cobra.NoArgs,
		RunE: runE(runMigrate),
	}
	f := cmd.Flags()
	f.String("from", "", "Store to copy from: file:<path>, sqlite:<path> or postgres:<dsn>")
	f.String("to", "", "Store to copy into: file:<path>, sqlite:<path> or postgres:<dsn>")
	f.String("realm", "default", "Realm to copy, on both sides (SQLite and PostgreSQL stores)")
	f.Bool("force", false, "Add to a target that already has tokens, users or settings")
	return cmd
}

// migrateSide is one end of a migration: its flag, its config, and the
// store once open.
type migrateSide struct {
	flag  string // "--from" or "--to"
	cfg   tokenstore.Config
	store tokenstore.Store
}

// String names the store in messages, password hidden, with its realm
// for the SQL stores that keep several.
func (s *migrateSide) String() string {
	if s.cfg.Type == tokenstore.TypeFile {
		return s.cfg.String()
	}
	return fmt.Sprintf("%s (realm %s)", s.cfg, s.cfg.Realm)
}

func (s *migrateSide) open() error {
	store, err := tokenstore.Open(s.cfg, nil)
	if err != nil {
		return fmt.Errorf("%s: %v", s.flag, err)
	}
	s.store = store
	return nil
}

// close closes the store if open; again, it does nothing.
func (s *migrateSide) close() error {
	if s.store == nil {
		return nil
	}
	store := s.store
	s.store = nil
	if err := store.Close(); err != nil {
		return fmt.Errorf("closing %s: %v", s, err)
	}
	return nil
}

// parseSide reads --from or --to.
func parseSide(cmd *cobra.Command, flag, realm string) (*migrateSide, error) {
	spec, _ := cmd.Flags().GetString(strings.TrimPrefix(flag, "--"))
	if spec == "" {
		return nil, fmt.Errorf("%s is required: file:<path>, sqlite:<path> or postgres:<dsn>", flag)
	}
	cfg, err := tokenstore.ParseSpec(spec)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	cfg.Realm = realm
	return &migrateSide{flag: flag, cfg: cfg}, nil
}

// storeContents is what a realm's store holds.
type storeContents struct {
	tokens   []tokenstore.Token // oldest first
	users    map[string]tokenstore.User
	settings tokenstore.Settings
}

func (c *storeContents) empty() bool {
	return len(c.tokens) == 0 && len(c.users) == 0 && c.settings.TestEndpointEnabled == nil
}

// describe says what the store holds, for messages.
func (c *storeContents) describe() string {
	if c.settings.TestEndpointEnabled == nil {
		return fmt.Sprintf("%d token(s) and %d user(s)", len(c.tokens), len(c.users))
	}
	return fmt.Sprintf("%d token(s), %d user(s) and settings (test_endpoint_enabled %t)",
		len(c.tokens), len(c.users), *c.settings.TestEndpointEnabled)
}

func readContents(ctx context.Context, s tokenstore.Store) (*storeContents, error) {
	var c storeContents
	var err error
	if c.tokens, err = s.ListTokens(ctx); err != nil {
		return nil, fmt.Errorf("listing tokens: %v", err)
	}
	if c.users, err = s.ListUsers(ctx); err != nil {
		return nil, fmt.Errorf("listing users: %v", err)
	}
	if c.settings, err = s.Settings(ctx); err != nil {
		return nil, fmt.Errorf("reading the settings: %v", err)
	}
	return &c, nil
}

func runMigrate(cmd *cobra.Command, _ []string) (err error) {
	fl := cmd.Flags()
	realm, _ := fl.GetString("realm")
	if realm == "" {
		return errors.New("--realm must not be empty")
	}
	force, _ := fl.GetBool("force")
	from, err := parseSide(cmd, "--from", realm)
	if err != nil {
		return err
	}
	to, err := parseSide(cmd, "--to", realm)
	if err != nil {
		return err
	}
	if sameStore(from.cfg, to.cfg) {
		return fmt.Errorf("--from and --to both name %s", to)
	}
	// Opening a file or SQLite store that does not exist makes an empty
	// one: for the source, that is a mistyped path, not a store to copy.
	if from.cfg.Type != tokenstore.TypePostgres {
		if _, err := os.Stat(from.cfg.Path); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--from: %s does not exist", from.cfg.Path)
		}
	}

	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	// The source is read whole before the target is opened, so that a
	// source that cannot be copied leaves no new target behind.
	closeStore := func(side *migrateSide) {
		if cerr := side.close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	if err := from.open(); err != nil {
		return err
	}
	defer closeStore(from)
	src, err := readContents(ctx, from.store)
	if err != nil {
		return fmt.Errorf("reading %s: %v", from, err)
	}
	if src.empty() {
		return fmt.Errorf("%s has no tokens, users or settings to copy", from)
	}
	if err := to.open(); err != nil {
		return err
	}
	defer closeStore(to)
	dst, err := readContents(ctx, to.store)
	if err != nil {
		return fmt.Errorf("reading %s: %v", to, err)
	}
	if !dst.empty() && !force {
		return fmt.Errorf("%s is not empty: it has %s; migrate copies into an empty store, "+
			"or with --force adds to it (the source's users and settings replace the target's, "+
			"tokens it already has unchanged are skipped)", to, dst.describe())
	}
	plan, err := planMigration(src, dst)
	if err != nil {
		return fmt.Errorf("%s: %v", to, err)
	}

	done, err := plan.copy(ctx, to.store)
	if err != nil {
		return fmt.Errorf("copying from %s to %s failed after it copied %s: %v; "+
			"run the same command again with --force to copy the rest", from, to, done.partial(), err)
	}
	// Closed before the summary, which must not claim a copy that the
	// store did not finish writing.
	if err := to.close(); err != nil {
		return err
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "Copied %s from %s to %s.\n", done, from, to)
	return nil
}

// sameStore reports whether a and b are the same realm of the same store.
func sameStore(a, b tokenstore.Config) bool {
	if a.Type != b.Type {
		return false
	}
	if a.Type == tokenstore.TypePostgres {
		return a.DSN == b.DSN && a.Realm == b.Realm
	}
	pa, errA := filepath.Abs(a.Path)
	pb, errB := filepath.Abs(b.Path)
	if errA != nil || errB != nil || pa != pb {
		return false
	}
	return a.Type == tokenstore.TypeFile || a.Realm == b.Realm
}

// migration is what to write into the target.
type migration struct {
	users    map[string]tokenstore.User
	tokens   []tokenstore.Token // to create, oldest first
	skipped  int                // tokens the target already has, unchanged
	settings tokenstore.Settings
}

// planMigration decides what to copy from src into dst, and refuses the
// tokens that dst has with other contents, before anything is written.
func planMigration(src, dst *storeContents) (*migration, error) {
	byID := make(map[string]*tokenstore.Token, len(dst.tokens))
	byDigest := make(map[tokenstore.Digest]*tokenstore.Token, len(dst.tokens))
	for i := range dst.tokens {
		t := &dst.tokens[i]
		byID[t.ID] = t
		if d := t.Digest(); d != (tokenstore.Digest{}) {
			byDigest[d] = t
		}
	}
	m := &migration{users: src.users, settings: src.settings}
	var conflicts []string
	for _, t := range src.tokens {
		if have, ok := byID[t.ID]; ok {
			if diff := tokenDiff(have, &t); diff != "" {
				conflicts = append(conflicts, fmt.Sprintf("token %s exists with another %s", t.ID, diff))
			} else {
				m.skipped++
			}
			continue
		}
		if have, ok := byDigest[t.Digest()]; ok && t.Digest() != (tokenstore.Digest{}) {
			conflicts = append(conflicts, fmt.Sprintf("token %s has the hash of token %s", t.ID, have.ID))
			continue
		}
		m.tokens = append(m.tokens, t)
	}
	if len(conflicts) > 0 {
		const most = 10
		n, more := len(conflicts), ""
		if n > most {
			more = fmt.Sprintf(" and %d more", n-most)
			conflicts = conflicts[:most]
		}
		return nil, fmt.Errorf("nothing copied: %d token(s) conflict with the target's: %s%s; "+
			"migrate does not change tokens that a store already has: revoke or remove them there, "+
			"or copy into an empty store", n, strings.Join(conflicts, "; "), more)
	}
	return m, nil
}

// tokenDiff names the first stored field in which a and b differ, or
// returns "" if they are the same token. Times that agree to the
// microsecond are the same: PostgreSQL keeps no finer ones.
func tokenDiff(a, b *tokenstore.Token) string {
	sameTime := func(x, y *time.Time) bool {
		if x == nil || y == nil {
			return x == nil && y == nil
		}
		return x.Sub(*y).Abs() < time.Microsecond
	}
	switch {
	case a.User != b.User:
		return "user"
	case a.Hash != b.Hash:
		return "hash"
	case a.Name != b.Name:
		return "name"
	case a.Scope != b.Scope:
		return "scope"
	case !sameTime(&a.Created, &b.Created):
		return "creation time"
	case !sameTime(a.Expires, b.Expires):
		return "expiry"
	case !sameTime(a.Revoked, b.Revoked):
		return "revocation"
	case !slices.Equal(a.AllowedIPs, b.AllowedIPs):
		return "allowed_ips"
	case !maps.Equal(a.RequiredHeaders, b.RequiredHeaders):
		return "required_headers"
	case !sameTime(a.LastUsed, b.LastUsed):
		return "last use"
	case !slices.Equal(a.LastIPs, b.LastIPs):
		return "last_ips"
	}
	return ""
}

// migrated counts what a migration wrote.
type migrated struct {
	users, tokens, skipped int
	settings               bool
}

// String says what was copied, as the summary does: "3 token(s) (and
// skipped 1 already there), 2 user(s) and the settings".
func (m migrated) String() string {
	return m.tokensDone() + fmt.Sprintf(", %d user(s) and the settings", m.users)
}

// partial says what a copy that failed had written, in the order it
// writes: "2 user(s) and 1 token(s), not the settings".
func (m migrated) partial() string {
	return fmt.Sprintf("%d user(s) and %s, not the settings", m.users, m.tokensDone())
}

func (m migrated) tokensDone() string {
	tokens := fmt.Sprintf("%d token(s)", m.tokens)
	if m.skipped > 0 {
		tokens += fmt.Sprintf(" (and skipped %d already there)", m.skipped)
	}
	return tokens
}

// copy writes the migration into s: users (created or replaced), then
// tokens, oldest first, then the settings. This order makes running it
// again after a failure safe: users and settings are rewritten, and the
// tokens already copied are found unchanged and skipped. It returns what
// it wrote, also on failure.
func (m *migration) copy(ctx context.Context, s tokenstore.Store) (migrated, error) {
	done := migrated{skipped: m.skipped}
	for _, name := range slices.Sorted(maps.Keys(m.users)) {
		if err := s.PutUser(ctx, name, m.users[name]); err != nil {
			return done, fmt.Errorf("storing user %s: %v", name, err)
		}
		done.users++
	}
	for _, t := range m.tokens {
		if err := s.CreateToken(ctx, t); err != nil {
			return done, fmt.Errorf("adding token %s: %v", t.ID, err)
		}
		done.tokens++
	}
	if err := s.PutSettings(ctx, m.settings); err != nil {
		return done, fmt.Errorf("storing the settings: %v", err)
	}
	done.settings = true
	return done, nil
}
