package tokenstore

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"
)

// How a cached SQL store learns of writes made elsewhere.
//
// PostgreSQL: every write through any store (a server's, or the CLI's on
// the store directly) sends NOTIFY api_token_auth, '<realm>:<kind>:<key>'
// in its own transaction, so that the notification goes out when, and
// only if, the change commits. Kinds are token (key: the token id, for
// create, revoke and rotate), user_tokens (the user whose tokens were all
// revoked), user (the user whose record changed), settings (no key) and
// lockout (a challenge or ban started or ended; key: its kind, and the
// store's OnLockoutChange listeners are told).
// Each cached store keeps one connection of its own LISTENing on that
// channel and, on a notification for its realm, clears its whole cache
// (the payload's kind and key are for people reading the traffic: clearing
// everything is simpler than finding every entry a change touches, and
// writes are rare). Other servers thus see a change as soon as the
// notification arrives, well within the 1 s of SPEC §8.
//
// A listener's connection can die silently: a NAT or firewall forgets it,
// the database's host freezes, and no FIN or RST ever arrives. A
// connection that only waits would then wait forever while the cache
// trusted its answers for the whole TTL. TCP keepalive cannot help: it
// counts in whole seconds, and a proxy that holds the socket answers it
// for a server that is gone. So the listener pings at the application level (see
// listenPingEvery) and, when a ping goes unanswered, or the connection
// fails in any other way, closes it and reconnects with backoff. Until it
// listens again, other servers' writes go unheard: the cache serves an
// answer without asking the database only within pgChangeDeadline of its
// query, and asks the database after that. Since notifications sent
// meanwhile are lost, the cache is cleared, and the lockout listeners
// told, once it listens again. While the database itself cannot answer
// either (it is down, most likely), nothing can reach this server: cached
// answers are served until their TTL, as SPEC §4 wants of an outage, and
// no answer outlives the TTL.
//
// SQLite has no notifications; servers share an SQLite store only through
// its file. A cached SQLite store reads PRAGMA data_version every second
// on a connection of its own: the value changes when any other connection
// (of this process or another) commits, and the store then clears its
// cache. Other servers thus see a change within about a second, inside
// the 2 s of SPEC §8; and whatever the watch misses, no cached answer
// outlives the cache TTL. A watch connection that fails is replaced at
// the next poll, and the cache cleared then. The store writes its last-use records on that
// same connection, so that they, which change nothing the cache holds, do
// not clear it.

// notifyChannel is the PostgreSQL channel of change notifications.
const notifyChannel = "api_token_auth"

// listenConnectTimeout bounds each attempt to reconnect the listener.
const listenConnectTimeout = 10 * time.Second

// pgChangeDeadline is how soon SPEC §8 promises that a change reaches
// every server sharing a PostgreSQL store.
const pgChangeDeadline = time.Second

// How the listener finds a dead connection. After listenPingEvery without
// a message it sends an empty query, and a connection that has not
// answered within listenPingTimeout is given up. A change committed after
// the connection's last sign of life (a notification or a ping's answer)
// is thus either heard, or the loss found, within 300 + 500 = 800 ms of
// it; from then on the cache serves no answer older than
// pgChangeDeadline without asking the database (cache.go). That leaves
// 200 ms of SPEC §8's second for the commit's own notification, the
// look-up that sees it and scheduling. 500 ms is hundreds of times a
// ping's round trip on a LAN and ample for a busy server's, so that load
// alone does not drop the listener (which would clear the cache); 300 ms
// costs one empty query three times a second per realm and server, on a
// connection that is otherwise idle. TCP keepalive, which counts in whole
// seconds, could not meet the bound.
const (
	listenPingEvery   = 300 * time.Millisecond
	listenPingTimeout = 500 * time.Millisecond
)

// maxNotifyPayload keeps a payload under PostgreSQL's limit (8000 bytes).
const maxNotifyPayload = 4000

// write runs a management change in a transaction and, once it has
// committed, clears the cache, so that the change applies at once here.
func (s *SQLStore) write(ctx context.Context, doing string, fn func(tx *sql.Tx) error) error {
	if err := s.inTx(ctx, doing, fn); err != nil {
		return err
	}
	s.cache.clear()
	return nil
}

// notify tells the other servers sharing a PostgreSQL database of a
// change, when tx commits. SQLite has nothing to send.
func (s *SQLStore) notify(ctx context.Context, tx *sql.Tx, kind, key string) error {
	if s.dialect != TypePostgres {
		return nil
	}
	payload := s.realm + ":" + kind + ":" + key
	if len(payload) > maxNotifyPayload {
		payload = strings.ToValidUTF8(payload[:maxNotifyPayload], "")
	}
	if _, err := tx.ExecContext(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, payload); err != nil {
		return s.unavailable("notifying other servers of a change", err)
	}
	return nil
}

// startWatching starts watching for other servers' writes: it opens the
// watching connection now, so that Open fails if it cannot, and nothing is
// cached before the watch is in place.
func (s *SQLStore) startWatching(ctx context.Context) error {
	switch s.dialect {
	case TypeSQLite:
		conn, v, err := s.openWatchConn(ctx)
		if err != nil {
			return err
		}
		s.watchConn, s.dataVersion = conn, v
	case TypePostgres:
		conn, err := s.listenConnect(ctx)
		if err != nil {
			return err
		}
		watchCtx, cancel := context.WithCancel(context.Background())
		s.watchCancel = cancel
		s.watchDone = make(chan struct{})
		go s.listen(watchCtx, conn)
	}
	return nil
}

// stopWatching ends the PostgreSQL listener. (The SQLite watch is part of
// the store's loop.)
func (s *SQLStore) stopWatching() {
	if s.watchCancel == nil {
		return
	}
	s.watchCancel()
	<-s.watchDone
}

// openWatchConn takes an SQLite connection for the store's own use and
// reads its data_version.
func (s *SQLStore) openWatchConn(ctx context.Context) (*sql.Conn, int64, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, 0, s.unavailable("opening the connection that watches for changes", err)
	}
	var v int64
	if err := conn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
		_ = conn.Close()
		return nil, 0, s.unavailable("reading the data version", err)
	}
	return conn, v, nil
}

// pollDataVersion clears the cache when another connection has committed
// since the last poll. It runs in the store's loop.
func (s *SQLStore) pollDataVersion() {
	ctx, cancel := context.WithTimeout(context.Background(), sqliteBusyTimeout)
	defer cancel()
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	if s.watchConn == nil {
		conn, v, err := s.openWatchConn(ctx)
		if err != nil {
			s.logger.Warn("watching the token store for changes; will retry", zap.String("store", s.where), zap.Error(err))
			return
		}
		s.watchConn, s.dataVersion = conn, v
		s.cache.clear() // commits since the connection was lost went unseen
		return
	}
	var v int64
	if err := s.watchConn.QueryRowContext(ctx, `PRAGMA data_version`).Scan(&v); err != nil {
		s.logger.Warn("watching the token store for changes; will retry", zap.String("store", s.where), zap.Error(err))
		_ = s.watchConn.Close()
		s.watchConn = nil
		return
	}
	if v != s.dataVersion {
		s.dataVersion = v
		s.cache.clear()
		// The commit may have been a lockout change: listeners reread.
		s.lockoutListeners.call()
	}
}

// listenConnect opens a PostgreSQL connection LISTENing for changes. It
// clears the cache, which is trusted for its TTL again from then on, and
// tells the lockout listeners: notifications sent before it listened went
// unseen.
func (s *SQLStore) listenConnect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pgConfig.Copy())
	if err != nil {
		return nil, s.unavailable("connecting to listen for changes", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{notifyChannel}.Sanitize()); err != nil {
		closeQuietly(conn)
		return nil, s.unavailable("listening for changes", err)
	}
	s.listenPID.Store(conn.PgConn().PID())
	s.cache.watched()
	s.lockoutListeners.call()
	s.listens.Add(1)
	return conn, nil
}

func closeQuietly(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// listen receives notifications on conn until ctx ends, reconnecting with
// backoff whenever the connection is lost.
func (s *SQLStore) listen(ctx context.Context, conn *pgx.Conn) {
	defer close(s.watchDone)
	backoff := s.listenBackoff
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		if conn != nil {
			err := s.receive(ctx, conn)
			s.listenPID.Store(0)
			s.cache.blinded(pgChangeDeadline)
			closeQuietly(conn)
			conn = nil
			if ctx.Err() != nil {
				return
			}
			s.logger.Warn("lost the connection listening for token store changes; reconnecting",
				zap.String("store", s.where), zap.Error(err))
		}
		timer.Reset(backoff)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		connectCtx, cancel := context.WithTimeout(ctx, listenConnectTimeout)
		c, err := s.listenConnect(connectCtx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = min(2*backoff, s.listenBackoffMax)
			s.logger.Warn("listening for token store changes; will retry",
				zap.String("store", s.where), zap.Duration("retry_in", backoff), zap.Error(err))
			continue
		}
		s.logger.Info("listening for token store changes again", zap.String("store", s.where))
		conn, backoff = c, s.listenBackoff
	}
}

// receive clears the cache on each notification for the store's realm,
// until the connection fails, a ping goes unanswered, or ctx ends.
func (s *SQLStore) receive(ctx context.Context, conn *pgx.Conn) error {
	for {
		// A connection waiting for a notification cannot send a ping, so
		// the wait ends after listenPingEvery. A wait ended so leaves the
		// connection usable: pgx's context watcher only sets a read
		// deadline, and a message half read is finished by the next read.
		wait, cancel := context.WithTimeout(ctx, listenPingEvery)
		n, err := conn.WaitForNotification(wait)
		cancel()
		if err == nil {
			s.notified(n)
			continue
		}
		if ctx.Err() != nil || !pgconn.Timeout(err) {
			return err
		}
		// Idle: ask. Notifications that arrive meanwhile are kept by pgx
		// for the next WaitForNotification.
		ping, cancel := context.WithTimeout(ctx, listenPingTimeout)
		err = conn.Ping(ping)
		cancel()
		if pgconn.Timeout(err) && ctx.Err() == nil {
			return fmt.Errorf("no answer to a ping within %v: %w", listenPingTimeout, err)
		}
		if err != nil {
			return fmt.Errorf("pinging: %w", err)
		}
	}
}

// notified acts on a notification.
func (s *SQLStore) notified(n *pgconn.Notification) {
	realm, rest, _ := strings.Cut(n.Payload, ":")
	if realm != s.realm {
		return
	}
	s.cache.clear()
	s.lastNotice.Store(n.Payload)
	if kind, _, _ := strings.Cut(rest, ":"); kind == "lockout" {
		s.lockoutListeners.call()
	}
}
