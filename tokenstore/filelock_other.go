//go:build !(darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd || windows)

package tokenstore

import "os"

// tryLock has no lock to take on this platform (AIX, Solaris, Plan 9,
// WebAssembly): the writes of one process are still serialised, but
// several processes must not write one store file at once.
func tryLock(*os.File) (bool, error) { return true, nil }

func unlockFile(*os.File) error { return nil }
