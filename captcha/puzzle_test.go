package captcha

import (
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// puzzleClock is a settable clock, safe for concurrent use.
type puzzleClock struct{ ns atomic.Int64 }

func newPuzzleClock() *puzzleClock {
	c := &puzzleClock{}
	c.ns.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *puzzleClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *puzzleClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

var urlSafeID = regexp.MustCompile(`^[A-Za-z0-9_-]{22}$`)

func TestPuzzleNew(t *testing.T) {
	t.Parallel()
	s := NewPuzzleStore(time.Minute, 100, newPuzzleClock().Now)
	seen := map[string]bool{}
	for range 50 {
		id := s.New()
		if !urlSafeID.MatchString(id) {
			t.Fatalf("id %q: want 22 URL-safe base64 characters", id)
		}
		if seen[id] {
			t.Fatalf("id %q issued twice", id)
		}
		seen[id] = true
		ans, ok := s.Peek(id)
		if !ok || !regexp.MustCompile(`^[0-9]{6}$`).MatchString(ans) {
			t.Fatalf("Peek(%q) = %q, %v; want 6 digits", id, ans, ok)
		}
		d, ok := s.Digits(id)
		if !ok || len(d) != PuzzleDigits {
			t.Fatalf("Digits(%q) = %v, %v", id, d, ok)
		}
		for i, v := range d {
			if v > 9 || ans[i] != '0'+v {
				t.Fatalf("Digits(%q) = %v does not match Peek %q", id, d, ans)
			}
		}
	}
}

func TestPuzzleDigitsDoesNotConsume(t *testing.T) {
	t.Parallel()
	s := NewPuzzleStore(time.Minute, 10, newPuzzleClock().Now)
	id := s.New()
	ans, _ := s.Peek(id)
	for range 3 {
		d, ok := s.Digits(id)
		if !ok {
			t.Fatal("Digits consumed the puzzle")
		}
		d[0] = 42 // a copy: must not change the answer
	}
	if !s.Solve(id, ans) {
		t.Fatal("right answer refused after Digits")
	}
}

func TestPuzzleSolve(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		answer func(right string) string
		want   bool
	}{
		{"right", func(a string) string { return a }, true},
		{"spaces around and inside", func(a string) string { return " " + a[:3] + " " + a[3:] + "\n" }, true},
		{"one digit off", func(a string) string { return a[:5] + string(rune('0'+(a[5]-'0'+1)%10)) }, false},
		{"too short", func(a string) string { return a[:5] }, false},
		{"too long", func(a string) string { return a + "0" }, false},
		{"empty", func(string) string { return "" }, false},
		{"letters", func(a string) string { return a[:5] + "x" }, false},
		{"dash", func(a string) string { return a[:3] + "-" + a[3:] }, false},
		{"fullwidth digits", func(string) string { return "１２３４５６" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := NewPuzzleStore(time.Minute, 10, newPuzzleClock().Now)
			id := s.New()
			right, _ := s.Peek(id)
			answer := tt.answer(right)
			if got := s.Solve(id, answer); got != tt.want {
				t.Fatalf("Solve(%q) with answer %q = %v, want %v", answer, right, got, tt.want)
			}
			// Single use, whatever the first answer was.
			if s.Solve(id, right) {
				t.Fatal("second Solve with the right answer succeeded: puzzle not consumed")
			}
			if _, ok := s.Digits(id); ok {
				t.Fatal("puzzle still renderable after Solve")
			}
		})
	}
}

func TestPuzzleUnknownID(t *testing.T) {
	t.Parallel()
	s := NewPuzzleStore(time.Minute, 10, newPuzzleClock().Now)
	id := s.New()
	right, _ := s.Peek(id)
	for _, bad := range []string{"", "nope", id + "x", strings.ToUpper(id)} {
		if bad == id {
			continue
		}
		if s.Solve(bad, right) {
			t.Errorf("Solve(%q) succeeded", bad)
		}
		if _, ok := s.Digits(bad); ok {
			t.Errorf("Digits(%q) found a puzzle", bad)
		}
	}
	if !s.Solve(id, right) {
		t.Fatal("wrong ids consumed the real puzzle")
	}
}

func TestPuzzleExpiry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		advance time.Duration
		want    bool
	}{
		{"just before", 10*time.Minute - time.Nanosecond, true},
		{"at expiry", 10 * time.Minute, false},
		{"long after", time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clock := newPuzzleClock()
			s := NewPuzzleStore(0, 0, clock.Now) // defaults: 10 min
			id := s.New()
			right, _ := s.Peek(id)
			clock.Advance(tt.advance)
			if _, ok := s.Digits(id); ok != tt.want {
				t.Errorf("Digits after %s: found %v, want %v", tt.advance, ok, tt.want)
			}
			if got := s.Solve(id, right); got != tt.want {
				t.Errorf("Solve after %s = %v, want %v", tt.advance, got, tt.want)
			}
		})
	}
}

func TestPuzzleBounded(t *testing.T) {
	t.Parallel()
	clock := newPuzzleClock()
	s := NewPuzzleStore(time.Minute, 3, clock.Now)
	ids := []string{s.New(), s.New(), s.New(), s.New(), s.New()}
	if n := s.Len(); n != 3 {
		t.Fatalf("Len = %d, want 3", n)
	}
	for i, id := range ids {
		_, ok := s.Digits(id)
		if want := i >= 2; ok != want {
			t.Errorf("puzzle %d live = %v, want %v (oldest evicted first)", i, ok, want)
		}
	}
	// New sweeps expired puzzles.
	clock.Advance(time.Minute)
	s.New()
	if n := s.Len(); n != 1 {
		t.Fatalf("Len after expiry = %d, want 1", n)
	}
}

func TestPuzzleConcurrent(t *testing.T) {
	t.Parallel()
	s := NewPuzzleStore(time.Minute, 1000, newPuzzleClock().Now)
	id := s.New()
	right, _ := s.Peek(id)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.Solve(id, right) {
				wins.Add(1)
			}
			other := s.New()
			s.Digits(other)
			a, _ := s.Peek(other)
			s.Solve(other, a)
		}()
	}
	wg.Wait()
	if n := wins.Load(); n != 1 {
		t.Fatalf("%d concurrent Solves of one puzzle succeeded, want exactly 1", n)
	}
}
