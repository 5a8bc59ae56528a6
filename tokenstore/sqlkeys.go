package tokenstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// MaxSharedKeyName bounds a shared key's name: names are the plugin's
// own constants, never a client's.
const MaxSharedKeyName = 64

// KeyStore is implemented by stores that keep secret keys shared by every
// server using the store (the SQL stores). The file store has none: its
// servers share Caddy's storage instead.
type KeyStore interface {
	// SharedKey returns the realm's key called name. When there is none
	// yet, fresh becomes it; when several servers race to create it, all
	// of them get the one that was written first.
	SharedKey(ctx context.Context, name string, fresh []byte) ([]byte, error)
}

// SharedKey implements KeyStore: one insert that keeps an existing row,
// then one read, so that every server ends up with the first key written.
func (s *SQLStore) SharedKey(ctx context.Context, name string, fresh []byte) ([]byte, error) {
	if name == "" || len(name) > MaxSharedKeyName {
		return nil, fmt.Errorf("shared key name %q: must be 1 to %d bytes", name, MaxSharedKeyName)
	}
	if len(fresh) == 0 {
		return nil, errors.New("shared key: no fresh key given")
	}
	if _, err := s.db.ExecContext(ctx, s.q(`INSERT INTO api_token_auth_keys (realm, name, value) VALUES (?, ?, ?)
		ON CONFLICT (realm, name) DO NOTHING`), s.realm, name, fresh); err != nil {
		return nil, s.unavailable("storing a shared key", err)
	}
	var key []byte
	err := s.db.QueryRowContext(ctx, s.q(`SELECT value FROM api_token_auth_keys WHERE realm = ? AND name = ?`),
		s.realm, name).Scan(&key)
	if errors.Is(err, sql.ErrNoRows) {
		// Only a concurrent delete could do this; the plugin never deletes keys.
		return nil, fmt.Errorf("token store %s: shared key %q vanished after it was written", s.where, name)
	}
	if err != nil {
		return nil, s.unavailable("reading a shared key", err)
	}
	return key, nil
}

// Interface guard
var _ KeyStore = (*SQLStore)(nil)
