package tokenstore

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// benchTokens is the size of the benchmarks' store: BENCHMARKS.md's
// "100,000 tokens".
const benchTokens = 100_000

var (
	benchFileOnce sync.Once
	benchFileData []byte
	benchFileErr  error
)

// benchStoreFile writes a store file of benchTokens tokens of one user,
// as bench/gentokens makes them but in the indented form the store
// writes, and returns its path. The contents are made once per run.
func benchStoreFile(b *testing.B) string {
	b.Helper()
	benchFileOnce.Do(func() {
		now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
		doc := fileDocument{Version: fileFormatVersion, Tokens: make([]*Token, benchTokens)}
		for i := range doc.Tokens {
			t, _, err := NewToken(TokenRequest{User: "bench", Name: fmt.Sprintf("bench-%d", i)}, DefaultPrefix, now, 0)
			if err != nil {
				benchFileErr = err
				return
			}
			doc.Tokens[i] = &t
		}
		benchFileData, benchFileErr = json.MarshalIndent(doc, "", "  ")
	})
	if benchFileErr != nil {
		b.Fatal(benchFileErr)
	}
	path := filepath.Join(b.TempDir(), "tokens.json")
	if err := os.WriteFile(path, benchFileData, 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

// liveHeap returns the bytes of live heap objects after a collection.
// Two collections: sync.Pool keeps what it holds through one (the 20 MB
// buffer of the file's encoding, say).
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkOpenFile100k opens a store file of 100,000 tokens, as Caddy
// does at start. live-B/token is the heap the open store keeps, measured
// after a collection: the store's share of Caddy's memory.
func BenchmarkOpenFile100k(b *testing.B) {
	path := benchStoreFile(b)
	b.ReportAllocs()
	var live uint64
	for b.Loop() {
		b.StopTimer()
		before := liveHeap()
		b.StartTimer()
		s, err := openFile(path, nil, time.Hour, noAutoFlush)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		live += liveHeap() - before
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(live)/float64(b.N)/benchTokens, "live-B/token")
}

// BenchmarkFlush100k writes one token's last use into a store file of
// 100,000 tokens: the batched write that runs while tokens are in use,
// including the reread of the file under its lock and the fsync.
func BenchmarkFlush100k(b *testing.B) {
	path := benchStoreFile(b)
	s, err := openFile(path, nil, time.Hour, noAutoFlush)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	id := s.current.Load().tokens[benchTokens/2].ID
	ip := netip.MustParseAddr("192.0.2.7")
	b.ReportAllocs()
	for b.Loop() {
		s.RecordUse(id, time.Now(), ip)
		s.flushUses()
	}
	if s.current.Load().byID[id].LastUsed == nil {
		b.Fatal("the flush did not record the use")
	}
}
