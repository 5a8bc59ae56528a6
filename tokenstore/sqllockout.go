package tokenstore

import (
	"context"
	"database/sql"
	"sync"
	"time"
)

// Lockout state in the SQL stores (SPEC §7): servers sharing a database
// share their failure counts, CAPTCHA challenges and IP bans.
//
// A failure is counted by one atomic upsert, so that attempts on several
// servers at once lose no increment and each sees its own rank in the
// run. Challenges and bans are rows written when they start and deleted
// when they end, never per request: a lockout keeps them in memory and
// rereads them every few seconds and, on PostgreSQL, when another server
// notifies a change (kind "lockout").

// Lockout record kinds.
const (
	LockoutChallenge = "challenge"
	LockoutBan       = "ban"
)

// LockoutRecord is a challenge or a ban as a database keeps it.
type LockoutRecord struct {
	// Kind is LockoutChallenge or LockoutBan.
	Kind string
	// Key is the lockout key of a challenge, or the address of a ban.
	Key string
	// User is a challenge's user; IP the address of a user_ip
	// challenge's key, or of a ban.
	User, IP string
	Started  time.Time
	// Until is when the record lapses by itself; zero for never.
	Until time.Time
}

// LockoutStore is implemented by stores that keep lockout state, shared
// by every server using the store. Keys are opaque bytes of any content.
type LockoutStore interface {
	// AddFailure adds a failure to the run counted under key, on behalf
	// of user ("" for none), and returns the run's length. A run whose
	// last failure is window or more before now starts again at 1; a
	// zero window never restarts one.
	AddFailure(ctx context.Context, key, user string, now time.Time, window time.Duration) (int, error)
	// ResetFailures ends the runs counted under keys.
	ResetFailures(ctx context.Context, keys ...string) error
	// PurgeFailures forgets the runs whose last failure is before t.
	PurgeFailures(ctx context.Context, before time.Time) error
	// PutLockout writes (or overwrites) a challenge or a ban, and ends
	// the runs counted under resetKeys.
	PutLockout(ctx context.Context, rec LockoutRecord, resetKeys ...string) error
	// DeleteLockout deletes a challenge or ban and the runs counted under
	// countKeys.
	DeleteLockout(ctx context.Context, kind, key string, countKeys ...string) error
	// DeleteUserLockouts deletes every challenge of user and every run
	// counted on their behalf.
	DeleteUserLockouts(ctx context.Context, user string) error
	// ListLockouts returns every challenge and ban.
	ListLockouts(ctx context.Context) ([]LockoutRecord, error)
	// OnLockoutChange registers fn, called on a goroutine of the store's
	// (fn must not block) when another server may have changed a
	// challenge or ban: a cached PostgreSQL store calls it on each lockout
	// notification, a cached SQLite store whenever another connection has
	// committed. A store without a cache never calls it. The returned
	// function unregisters it.
	OnLockoutChange(fn func()) (unregister func())
}

// lockoutListeners are the callbacks of OnLockoutChange.
type lockoutListeners struct {
	mu  sync.Mutex
	n   int
	fns map[int]func()
}

func (ls *lockoutListeners) add(fn func()) func() {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.fns == nil {
		ls.fns = make(map[int]func())
	}
	ls.n++
	id := ls.n
	ls.fns[id] = fn
	return func() {
		ls.mu.Lock()
		delete(ls.fns, id)
		ls.mu.Unlock()
	}
}

func (ls *lockoutListeners) call() {
	ls.mu.Lock()
	fns := make([]func(), 0, len(ls.fns))
	for _, fn := range ls.fns {
		fns = append(fns, fn)
	}
	ls.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// OnLockoutChange implements LockoutStore.
func (s *SQLStore) OnLockoutChange(fn func()) func() { return s.lockoutListeners.add(fn) }

// AddFailure implements LockoutStore in one statement.
func (s *SQLStore) AddFailure(ctx context.Context, key, user string, now time.Time, window time.Duration) (int, error) {
	restart := time.Time{} // never
	if window > 0 {
		restart = now.Add(-window)
	}
	// On SQLite, on the connection that watches data_version, whose own
	// commits do not change it: a flood of failed attempts must not clear
	// this server's look-up cache with every attempt. (Other servers'
	// caches are cleared at most once per poll.)
	var on querier = s.db
	if s.dialect == TypeSQLite {
		s.watchMu.Lock()
		defer s.watchMu.Unlock()
		if s.watchConn != nil {
			on = s.watchConn
		}
	}
	var n int
	err := on.QueryRowContext(ctx, s.q(`INSERT INTO api_token_auth_lockout_counts (realm, lockout_key, user_name, n, last)
		VALUES (?, ?, ?, 1, ?)
		ON CONFLICT (realm, lockout_key) DO UPDATE SET
			n = CASE WHEN api_token_auth_lockout_counts.last <= ? THEN 1 ELSE api_token_auth_lockout_counts.n + 1 END,
			last = excluded.last
		RETURNING n`),
		s.realm, []byte(key), []byte(user), s.timeValue(now), s.timeValue(restart)).Scan(&n)
	if err != nil {
		return 0, s.unavailable("counting a failed attempt", err)
	}
	return n, nil
}

// ResetFailures implements LockoutStore.
func (s *SQLStore) ResetFailures(ctx context.Context, keys ...string) error {
	return s.inTx(ctx, "resetting failure counts", func(tx *sql.Tx) error {
		return s.resetFailures(ctx, tx, keys)
	})
}

func (s *SQLStore) resetFailures(ctx context.Context, tx *sql.Tx, keys []string) error {
	for _, key := range keys {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM api_token_auth_lockout_counts WHERE realm = ? AND lockout_key = ?`),
			s.realm, []byte(key)); err != nil {
			return s.unavailable("resetting failure counts", err)
		}
	}
	return nil
}

// PurgeFailures implements LockoutStore.
func (s *SQLStore) PurgeFailures(ctx context.Context, before time.Time) error {
	if _, err := s.db.ExecContext(ctx, s.q(`DELETE FROM api_token_auth_lockout_counts WHERE realm = ? AND last < ?`),
		s.realm, s.timeValue(before)); err != nil {
		return s.unavailable("forgetting old failure counts", err)
	}
	return nil
}

// PutLockout implements LockoutStore.
func (s *SQLStore) PutLockout(ctx context.Context, rec LockoutRecord, resetKeys ...string) error {
	var until *time.Time
	if !rec.Until.IsZero() {
		until = &rec.Until
	}
	return s.inTx(ctx, "storing a lockout", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, s.q(`INSERT INTO api_token_auth_lockouts (realm, kind, lockout_key, user_name, ip, started, until)
			VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (realm, kind, lockout_key) DO UPDATE SET user_name = excluded.user_name, ip = excluded.ip,
				started = excluded.started, until = excluded.until`),
			s.realm, rec.Kind, []byte(rec.Key), []byte(rec.User), rec.IP, s.timeValue(rec.Started), s.timeArg(until))
		if err != nil {
			return s.unavailable("storing a lockout", err)
		}
		if err := s.resetFailures(ctx, tx, resetKeys); err != nil {
			return err
		}
		return s.notify(ctx, tx, "lockout", rec.Kind)
	})
}

// DeleteLockout implements LockoutStore.
func (s *SQLStore) DeleteLockout(ctx context.Context, kind, key string, countKeys ...string) error {
	return s.inTx(ctx, "deleting a lockout", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM api_token_auth_lockouts WHERE realm = ? AND kind = ? AND lockout_key = ?`),
			s.realm, kind, []byte(key)); err != nil {
			return s.unavailable("deleting a lockout", err)
		}
		if err := s.resetFailures(ctx, tx, countKeys); err != nil {
			return err
		}
		return s.notify(ctx, tx, "lockout", kind)
	})
}

// DeleteUserLockouts implements LockoutStore.
func (s *SQLStore) DeleteUserLockouts(ctx context.Context, user string) error {
	return s.inTx(ctx, "deleting a user's lockouts", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM api_token_auth_lockouts WHERE realm = ? AND kind = ? AND user_name = ?`),
			s.realm, LockoutChallenge, []byte(user)); err != nil {
			return s.unavailable("deleting a user's lockouts", err)
		}
		if _, err := tx.ExecContext(ctx, s.q(`DELETE FROM api_token_auth_lockout_counts WHERE realm = ? AND user_name = ?`),
			s.realm, []byte(user)); err != nil {
			return s.unavailable("deleting a user's lockouts", err)
		}
		return s.notify(ctx, tx, "lockout", LockoutChallenge)
	})
}

// ListLockouts implements LockoutStore.
func (s *SQLStore) ListLockouts(ctx context.Context) ([]LockoutRecord, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT kind, lockout_key, user_name, ip, started, until
		FROM api_token_auth_lockouts WHERE realm = ?`), s.realm)
	if err != nil {
		return nil, s.unavailable("listing lockouts", err)
	}
	defer rows.Close()
	var out []LockoutRecord
	for rows.Next() {
		var rec LockoutRecord
		var key, user []byte
		var started, until nullTime
		if err := rows.Scan(&rec.Kind, &key, &user, &rec.IP, &started, &until); err != nil {
			return nil, s.unavailable("listing lockouts", err)
		}
		rec.Key, rec.User = string(key), string(user)
		if started.t != nil {
			rec.Started = *started.t
		}
		if until.t != nil {
			rec.Until = *until.t
		}
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, s.unavailable("listing lockouts", err)
	}
	return out, nil
}

// Interface guard
var _ LockoutStore = (*SQLStore)(nil)
