package tokenstore

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFileStoreTwoStoresLoseNoToken: two stores on one file, as two
// servers would have, create tokens and users and flush last-use records
// all at once. Every change of both must be in the file, and each store
// must serve every token once its poll has read the other's writes.
func TestFileStoreTwoStoresLoseNoToken(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	base, _ := newTestToken(t, "alice")
	replaceFile(t, path, docBytes(t, base))
	var stores [2]*FileStore
	for i := range stores {
		logger, _ := observedLogger()
		s, err := openFile(path, logger, testPollEvery, 10*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores[i] = s
	}

	const writers, perWriter = 4, 10
	var (
		mu      sync.Mutex
		secrets []string
		wg      sync.WaitGroup
	)
	for si, s := range stores {
		for w := range writers {
			wg.Go(func() {
				for i := range perWriter {
					tok, secret := newTestToken(t, fmt.Sprintf("user-%d-%d", si, w))
					if err := s.CreateToken(bg, tok); err != nil {
						t.Errorf("store %d: CreateToken: %v", si, err)
						return
					}
					// Flushes of last-use records interleave with the creates.
					s.RecordUse(base.ID, time.Now(), netip.AddrFrom4([4]byte{10, byte(si), byte(w), byte(i)}))
					mu.Lock()
					secrets = append(secrets, secret)
					mu.Unlock()
				}
				if err := s.PutUser(bg, fmt.Sprintf("user-%d-%d", si, w), User{Groups: []string{"dev"}}); err != nil {
					t.Errorf("store %d: PutUser: %v", si, err)
				}
			})
		}
	}
	wg.Wait()
	for _, s := range stores {
		s.Close() // writes what is pending
	}
	if t.Failed() {
		return
	}

	doc := decodeFile(t, path)
	snap, err := doc.snapshot()
	if err != nil {
		t.Fatalf("the file after the concurrent writes is invalid: %v", err)
	}
	var lost int
	for _, secret := range secrets {
		if _, ok := snap.byDigest[DigestOf(secret)]; !ok {
			lost++
		}
	}
	if want := 1 + len(stores)*writers*perWriter; lost > 0 || len(snap.tokens) != want {
		t.Errorf("the file holds %d tokens, want %d: %d created tokens lost", len(snap.tokens), want, lost)
	}
	if len(snap.users) != len(stores)*writers {
		t.Errorf("the file holds %d users, want %d", len(snap.users), len(stores)*writers)
	}
	if tok := snap.byID[base.ID]; tok == nil || tok.LastUsed == nil {
		t.Errorf("no last use recorded for the base token: %+v", tok)
	}

	// Each store, reopened as a server would after a restart, and each
	// running one after its poll, serves every token.
	for i := range stores {
		s, _ := openTestStore(t, path)
		for _, secret := range secrets {
			if _, err := lookup(s, secret); err != nil {
				t.Fatalf("reopened store %d: a created token is not served: %v", i, err)
			}
		}
	}
}

// TestFileStoreTwoStoresSeeEachOther: a token created through one store
// is served by the other, within its poll.
func TestFileStoreTwoStoresSeeEachOther(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, _ := openTestStore(t, path)
	b, _ := openTestStore(t, path)
	for i := range 10 {
		from, to := a, b
		if i%2 == 1 {
			from, to = b, a
		}
		tok, secret := newTestToken(t, "alice")
		if err := from.CreateToken(bg, tok); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the other store to serve a new token", func() bool {
			_, err := lookup(to, secret)
			return err == nil
		})
	}
	if n := len(a.Tokens()); n != 10 {
		t.Errorf("store a serves %d tokens, want 10", n)
	}
}

// TestFileStoreWaitsForTheLock: while another process holds the store
// file's lock, a write waits for it and, past its bound, fails with an
// error naming the lock file and leaves the file as it was.
func TestFileStoreWaitsForTheLock(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	s, _ := openTestStore(t, path)
	first, _ := newTestToken(t, "alice")
	if err := s.CreateToken(bg, first); err != nil {
		t.Fatal(err)
	}
	before := readFile(t, path)

	unlock, err := lockFile(lockPath(path), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	s.lockWait = 50 * time.Millisecond
	tok, secret := newTestToken(t, "alice")
	err = s.CreateToken(bg, tok)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") || !strings.Contains(err.Error(), lockPath(path)) {
		t.Errorf("CreateToken while the lock is held: %v, want an error naming the lock file", err)
	}
	if got := readFile(t, path); string(got) != string(before) {
		t.Errorf("the file changed while another process held the lock:\n%s", got)
	}
	if _, err := lookup(s, secret); err == nil {
		t.Error("a token that was not written is served")
	}

	// Released while a write waits: the write goes ahead.
	s.lockWait = time.Minute
	done := make(chan error, 1)
	go func() { done <- s.CreateToken(bg, tok) }()
	unlock()
	if err := <-done; err != nil {
		t.Fatalf("CreateToken once the lock is free: %v", err)
	}
	if _, err := lookup(s, secret); err != nil {
		t.Errorf("the token written after the wait is not served: %v", err)
	}
}

// TestFileStoreRemovesLeftoverTemps: the temporary file of a write that
// a crash interrupted neither stops the next write nor stays.
func TestFileStoreRemovesLeftoverTemps(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.json")
	s, logs := openTestStore(t, path)
	leftover := filepath.Join(dir, ".tokens.json.tmp-12345")
	if err := os.WriteFile(leftover, []byte(`{"version": 1, "tok`), 0o600); err != nil {
		t.Fatal(err)
	}
	// Another store file's temporary file in the same directory is not
	// this store's to remove.
	other := filepath.Join(dir, ".tokens.json.bak.tmp-1")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tok, secret := newTestToken(t, "alice")
	if err := s.CreateToken(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Errorf("the leftover temporary file is still there: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another file's temporary file was removed: %v", err)
	}
	if logs.FilterMessage("removed a temporary file left by an interrupted write").Len() != 1 {
		t.Error("the removal was not logged")
	}
	if _, err := lookup(reopen(t, path), secret); err != nil {
		t.Errorf("the token is not in the file: %v", err)
	}
}
