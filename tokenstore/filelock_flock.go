//go:build darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd

package tokenstore

import (
	"errors"
	"os"
	"syscall"
)

// tryLock takes f's exclusive flock without waiting, and reports whether
// it got it. A flock belongs to the open file: it excludes another open
// of the same file in the same process too, so two stores in one test
// exclude each other as two servers do. Linux emulates it on NFS with the
// server's byte-range locks, so servers sharing a file over NFS exclude
// each other as well.
func tryLock(f *os.File) (bool, error) {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.EWOULDBLOCK):
			return false, nil
		case errors.Is(err, syscall.EINTR):
			continue
		}
		return false, err
	}
}

func unlockFile(f *os.File) error {
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}
