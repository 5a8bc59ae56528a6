package tokenstore

import (
	"fmt"
	"os"
	"time"
)

// Every write of a store file happens under an exclusive lock on a
// sibling file, <store file>.lock, so that servers (and `caddy api-token
// --store file:…`) sharing one store file never lose each other's changes:
// each writer rereads the file under the lock and applies its change to
// what is there.
//
// The lock is an advisory lock of the operating system (flock, or
// LockFileEx on Windows), not a lock file whose existence is the lock,
// the way Caddy's storage (certmagic's FileStorage) locks: the kernel
// drops it the moment its holder dies, even by SIGKILL, so a crashed
// writer never blocks the next one, and no holder that merely paused (a
// long GC, a stopped VM) is ever judged stale and overtaken while it is
// still writing. Certmagic's lock would also make every waiter poll once a
// second and wait out a dead holder for 10 s.
//
// The lock is on a sibling rather than on the store file itself because
// each write replaces the store file by a rename: a lock on the old file
// would not stop a writer that opened the new one. The lock file holds
// nothing and is never removed: a writer waiting on a removed lock file
// would get its lock while another holds that of a new one (lockFile
// checks for this, but only for a removal while it waits).

// lockWait is how long a write waits for another process to finish its
// own. Writes take milliseconds: a lock held longer is someone holding it
// by hand (flock(1) around an edit), and the write fails rather than hangs.
const lockWait = 10 * time.Second

// lockPath is where the lock of the store file at path lives.
func lockPath(path string) string { return path + ".lock" }

// lockFile takes the exclusive lock on the lock file at path, creating it
// if need be, waiting at most wait, and returns the function that releases
// it.
func lockFile(path string, wait time.Duration) (unlock func(), err error) {
	deadline := time.Now().Add(wait)
	pause := time.Millisecond
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("locking token store file: %v", err)
		}
		locked, err := tryLock(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking token store file: %s: %v", path, err)
		}
		if locked {
			// A lock file removed and made again while this one waited
			// is another file: its lock would exclude no one.
			if current(f, path) {
				return func() {
					_ = unlockFile(f)
					f.Close()
				}, nil
			}
			_ = unlockFile(f)
		}
		f.Close()
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("token store file locked by another process for over %s (lock file %s)", wait, path)
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Millisecond)
	}
}

// current reports whether f is still the file at path.
func current(f *os.File, path string) bool {
	held, err := f.Stat()
	if err != nil {
		return false
	}
	now, err := os.Stat(path)
	return err == nil && os.SameFile(held, now)
}
