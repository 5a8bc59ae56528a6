package tokenstore

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
)

// Every server sharing a database ends up with the key written first, even
// when they race to create it; realms have keys of their own.
func TestSharedKey(t *testing.T) {
	forEachSQL(t, func(t *testing.T, open sqlOpener) {
		ctx := context.Background()
		const servers = 8
		stores := make([]*SQLStore, servers)
		for i := range stores {
			s, err := open("r")
			if err != nil {
				t.Fatal(err)
			}
			stores[i] = s
		}
		keys := make([][]byte, servers)
		errs := make([]error, servers)
		var wg sync.WaitGroup
		for i, s := range stores {
			wg.Go(func() {
				keys[i], errs[i] = s.SharedKey(ctx, "unlock", []byte{byte(i + 1), 0xAA})
			})
		}
		wg.Wait()
		for i := range keys {
			if errs[i] != nil {
				t.Fatalf("server %d: %v", i, errs[i])
			}
			if !bytes.Equal(keys[i], keys[0]) {
				t.Fatalf("server %d got key %x, server 0 got %x", i, keys[i], keys[0])
			}
		}
		// A later call with another fresh key keeps the first.
		again, err := stores[0].SharedKey(ctx, "unlock", []byte("other"))
		if err != nil || !bytes.Equal(again, keys[0]) {
			t.Fatalf("second SharedKey = %x, %v; want %x", again, err, keys[0])
		}
		other, err := open("other-realm")
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := other.SharedKey(ctx, "unlock", []byte("theirs"))
		if err != nil || string(theirs) != "theirs" {
			t.Fatalf("another realm's key = %q, %v; want its own", theirs, err)
		}
	})
}

func TestSharedKeyRefusesBadInput(t *testing.T) {
	forEachSQL(t, func(t *testing.T, open sqlOpener) {
		s, err := open("r")
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if _, err := s.SharedKey(ctx, "", []byte("k")); err == nil {
			t.Error("an empty name was accepted")
		}
		if _, err := s.SharedKey(ctx, strings.Repeat("n", MaxSharedKeyName+1), []byte("k")); err == nil {
			t.Error("a name over the bound was accepted")
		}
		if _, err := s.SharedKey(ctx, "unlock", nil); err == nil {
			t.Error("an empty fresh key was accepted")
		}
	})
}
