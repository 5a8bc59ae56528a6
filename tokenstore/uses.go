package tokenstore

import (
	"net/netip"
	"sync"
	"time"
)

// useBatch gathers last-use records in memory between writes, so that a
// store writes them in one batch every few seconds instead of once per
// request. Both stores embed one.
type useBatch struct {
	usesMu  sync.Mutex
	pending map[string]*pendingUse // by token id; guarded by usesMu
}

// RecordUse notes that token id authenticated a request at at from ip. It
// only updates memory: the store's loop writes the batch.
func (b *useBatch) RecordUse(id string, at time.Time, ip netip.Addr) {
	b.usesMu.Lock()
	defer b.usesMu.Unlock()
	if b.pending == nil {
		b.pending = make(map[string]*pendingUse)
	}
	u := b.pending[id]
	if u == nil {
		u = &pendingUse{ips: make([]netip.Addr, 0, MaxLastIPs)}
		b.pending[id] = u
	}
	u.add(at, ip)
}

// takeUses hands over the gathered records (nil when there are none) and
// starts a new batch.
func (b *useBatch) takeUses() map[string]*pendingUse {
	b.usesMu.Lock()
	defer b.usesMu.Unlock()
	uses := b.pending
	if len(uses) == 0 {
		return nil
	}
	b.pending = make(map[string]*pendingUse, len(uses))
	return uses
}

// restoreUses puts back records whose write failed, merged with what was
// gathered meanwhile, for the next try.
func (b *useBatch) restoreUses(uses map[string]*pendingUse) {
	b.usesMu.Lock()
	defer b.usesMu.Unlock()
	if b.pending == nil {
		b.pending = make(map[string]*pendingUse, len(uses))
	}
	for id, older := range uses {
		if newer, ok := b.pending[id]; ok {
			older.merge(newer)
		}
		b.pending[id] = older
	}
}
