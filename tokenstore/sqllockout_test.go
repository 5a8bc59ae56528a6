package tokenstore

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// Two stores (two servers) on one database count concurrent failures
// under one key without losing an increment: the counts returned are
// exactly 1..n.
func TestSQLAddFailureConcurrent(t *testing.T) {
	forEachSQL(t, func(t *testing.T, open sqlOpener) {
		a, err := open("default")
		if err != nil {
			t.Fatal(err)
		}
		b, err := open("default")
		if err != nil {
			t.Fatal(err)
		}
		other, err := open("other")
		if err != nil {
			t.Fatal(err)
		}
		const n = 100
		ctx := context.Background()
		key := "c\x00192.0.2.1\x00al\x00ice" // keys hold anything
		counts := make([]int, n)
		var wg sync.WaitGroup
		for i := range n {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				c, err := s.AddFailure(ctx, key, "al\x00ice", baseTime, time.Minute)
				if err != nil {
					t.Error(err)
				}
				counts[i] = c
			})
		}
		wg.Wait()
		slices.Sort(counts)
		for i, c := range counts {
			if c != i+1 {
				t.Fatalf("counts %v, want 1..%d", counts, n)
			}
		}
		// Another realm has its own runs.
		if c, err := other.AddFailure(ctx, key, "", baseTime, time.Minute); err != nil || c != 1 {
			t.Errorf("other realm: %d, %v; want 1", c, err)
		}
		// A run older than the window starts again; a zero window never.
		if c, _ := a.AddFailure(ctx, key, "", baseTime.Add(time.Minute), time.Minute); c != 1 {
			t.Errorf("after the window: %d, want 1", c)
		}
		if c, _ := a.AddFailure(ctx, key, "", baseTime.Add(time.Hour), 0); c != 2 {
			t.Errorf("zero window: %d, want 2", c)
		}

		// Challenges and bans round-trip, and deletes reset the counts.
		until := baseTime.Add(time.Hour)
		recs := []LockoutRecord{
			{Kind: LockoutChallenge, Key: key[2:], User: "al\x00ice", IP: "192.0.2.1", Started: baseTime},
			{Kind: LockoutBan, Key: "192.0.2.9", IP: "192.0.2.9", Started: baseTime, Until: until},
		}
		for _, r := range recs {
			if err := a.PutLockout(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		got, err := b.ListLockouts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(got, func(x, y LockoutRecord) int {
			if x.Kind < y.Kind {
				return 1
			}
			return -1
		})
		if len(got) != 2 || got[0].Key != recs[0].Key || got[0].User != recs[0].User || !got[0].Until.IsZero() ||
			!got[0].Started.Equal(baseTime) || !got[1].Until.Equal(until) || got[1].IP != "192.0.2.9" {
			t.Errorf("ListLockouts = %+v, want %+v", got, recs)
		}
		if l, _ := other.ListLockouts(ctx); len(l) != 0 {
			t.Errorf("other realm lists %+v", l)
		}
		if err := b.DeleteUserLockouts(ctx, "al\x00ice"); err != nil {
			t.Fatal(err)
		}
		if err := b.DeleteLockout(ctx, LockoutBan, "192.0.2.9"); err != nil {
			t.Fatal(err)
		}
		if l, _ := a.ListLockouts(ctx); len(l) != 0 {
			t.Errorf("after the deletes: %+v", l)
		}
		if c, _ := a.AddFailure(ctx, key, "al\x00ice", baseTime.Add(time.Hour), 0); c != 1 {
			t.Errorf("after DeleteUserLockouts: count %d, want 1", c)
		}
		if err := a.PurgeFailures(ctx, baseTime.Add(2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if c, _ := a.AddFailure(ctx, key, "", baseTime.Add(time.Hour), 0); c != 1 {
			t.Errorf("after PurgeFailures: count %d, want 1", c)
		}
	})
}
