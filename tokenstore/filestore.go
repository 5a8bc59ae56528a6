package tokenstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// fileFormatVersion is the version of the store file format this code
// writes; files of a newer version are refused rather than misread.
const fileFormatVersion = 1

// How often the file store looks for outside changes to its file, and how
// often it writes batched last-use records. Polling (rather than inotify)
// works on every filesystem, including network mounts and bind-mounted
// Kubernetes secrets, and a stat per second costs nothing.
const (
	defaultPollEvery  = time.Second
	defaultFlushEvery = 5 * time.Second
)

// flushSpacing keeps the last-use writes to a small share of the time: a
// write rewrites the whole file, which for 100,000 tokens (20 MB) takes a
// good fraction of a second, so the next one waits at least flushSpacing
// times as long as the last one took (with defaultFlushEvery as the
// floor). A large store's last_used is then that much older on disk;
// it is informational, and a use is never lost, only written later.
const flushSpacing = 20

// racyStampWindow: two versions of the file written within the file
// system's timestamp granularity (a clock tick, or up to 2 s on some file
// systems) can have the same size and modification time. While the
// modification time is this recent, the poll also compares the contents.
const racyStampWindow = 3 * time.Second

// fileDocument is the store file's JSON form.
type fileDocument struct {
	// Version of the format; 1.
	Version int `json:"version"`
	// Users by name.
	Users map[string]*User `json:"users,omitempty"`
	// Tokens, in creation order.
	Tokens []*Token `json:"tokens"`
	// Settings shared by every server that uses this file.
	Settings Settings `json:"settings,omitzero"`

	// shared is the snapshot that serves this document's tokens, if any:
	// requests read those, so a change copies a token before it writes
	// to it (see edit).
	shared *fileSnapshot
}

// fileSnapshot is one consistent, read-only view of the file, indexed for
// the request path. It is replaced whole, never modified.
type fileSnapshot struct {
	tokens   []*Token            // every token, in file order
	byID     map[string]*Token   // every token
	byDigest map[Digest]*Token   // sha256 tokens
	slow     map[string][]*Token // slow-hash tokens by user, in file order
	// slowModel is the SlowHashModel of the slow-hash tokens.
	slowModel string
	users     map[string]*User
	settings  Settings
}

// fileStamp tells whether the file changed since it was last read.
type fileStamp struct {
	exists  bool
	size    int64
	modTime time.Time
	sum     Digest // SHA-256 of the contents; zero from statFile, which does not read them
}

// FileStore keeps users, tokens and settings in one JSON file. It serves
// every read from an in-memory snapshot, picks up outside edits of the file
// within about a second, keeps serving the last good contents when the file
// is corrupt or half-written, and writes through a temporary file and a
// rename, so that readers never see a partial file.
type FileStore struct {
	path   string
	logger *zap.Logger

	current atomic.Pointer[fileSnapshot]

	// writeMu serialises every read-modify-write and reload of the file.
	// The request path never takes it.
	writeMu sync.Mutex
	seen    fileStamp // the file version last read or tried; guarded by writeMu
	// served is the SHA-256 of the file contents that current holds
	// (zero for none: a missing file); guarded by writeMu. A write
	// whose reread finds these contents uses current instead of decoding
	// the file again.
	served Digest
	// writeFile replaces the file with what encode writes; writeFileAtomic
	// but in tests, which count writes. Called with writeMu and the
	// file's lock held.
	writeFile func(path string, encode func(io.Writer) error) error
	// lockWait bounds the wait for another process's write: the
	// constant lockWait but in tests.
	lockWait time.Duration

	// useBatch gathers last-use records between writes; it provides
	// RecordUse.
	useBatch

	pollEvery, flushEvery time.Duration
	stop                  chan struct{}
	done                  chan struct{}
	closeOnce             sync.Once
}

// pendingUse is what RecordUse gathered for one token since the last flush.
type pendingUse struct {
	at  time.Time
	ips []netip.Addr // distinct, oldest first, at most MaxLastIPs
}

// OpenFile loads the store file at path and starts watching it. A missing
// file is an empty store (the CLI creates it with the first token); a file
// that cannot be read or parsed is an error.
func OpenFile(path string, logger *zap.Logger) (*FileStore, error) {
	return openFile(path, logger, defaultPollEvery, defaultFlushEvery)
}

func openFile(path string, logger *zap.Logger, pollEvery, flushEvery time.Duration) (*FileStore, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	s := &FileStore{
		path:       path,
		logger:     logger,
		writeFile:  writeFileAtomic,
		lockWait:   lockWait,
		pollEvery:  pollEvery,
		flushEvery: flushEvery,
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	doc, stamp, err := readDocument(path)
	if err != nil {
		return nil, err
	}
	snap, err := doc.snapshot()
	if err != nil {
		return nil, fmt.Errorf("token store file %s: %v", path, err)
	}
	if !stamp.exists {
		logger.Info("token store file does not exist yet; starting with no tokens", zap.String("file", path))
	}
	s.seen = stamp
	s.served = stamp.sum
	s.current.Store(snap)
	go s.loop()
	return s, nil
}

// Kind implements Store.
func (*FileStore) Kind() string { return TypeFile }

// LookupToken implements Store.
func (s *FileStore) LookupToken(_ context.Context, d Digest) (*Token, error) {
	if t, ok := s.current.Load().byDigest[d]; ok {
		return t, nil
	}
	return nil, ErrNotFound
}

// LookupUser implements Store.
func (s *FileStore) LookupUser(_ context.Context, name string) (*User, error) {
	return s.current.Load().users[name], nil
}

// Settings implements Store.
func (s *FileStore) Settings(context.Context) (Settings, error) {
	return s.current.Load().settings, nil
}

// LookupBasic implements Store.
func (s *FileStore) LookupBasic(_ context.Context, user string) ([]*Token, error) {
	return s.current.Load().slow[user], nil
}

// Check reads the file as a fresh open would, and reports what is wrong
// with it, without changing what the store serves.
func (s *FileStore) Check() error {
	// Every config load asks: a file that holds exactly what the store
	// serves passed these checks when it was loaded, and a large one is
	// not decoded again for nothing.
	s.writeMu.Lock()
	served := s.served
	s.writeMu.Unlock()
	if stamp, err := hashStoreFile(s.path); err == nil && stamp.exists && stamp.sum == served {
		return nil
	}
	doc, _, err := readDocument(s.path)
	if err != nil {
		return err
	}
	if _, err := doc.snapshot(); err != nil {
		return fmt.Errorf("token store file %s: %v", s.path, err)
	}
	return nil
}

// SlowHashModel implements Store.
func (s *FileStore) SlowHashModel(context.Context) (string, error) {
	return s.current.Load().slowModel, nil
}

// Tokens returns every token, oldest first. For listings, not requests.
// The results are shared: do not modify them.
func (s *FileStore) Tokens() []*Token {
	out := slices.Clone(s.current.Load().tokens)
	slices.SortStableFunc(out, func(a, b *Token) int { return a.Created.Compare(b.Created) })
	return out
}

// ListTokens implements Store.
func (s *FileStore) ListTokens(ctx context.Context) ([]Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	shared := s.Tokens()
	out := make([]Token, len(shared))
	for i, t := range shared {
		out[i] = t.clone()
	}
	return out, nil
}

// GetToken implements Store.
func (s *FileStore) GetToken(ctx context.Context, id string) (Token, error) {
	if err := ctx.Err(); err != nil {
		return Token{}, err
	}
	t, ok := s.current.Load().byID[id]
	if !ok {
		return Token{}, tokenNotFound(id)
	}
	return t.clone(), nil
}

func tokenNotFound(id string) error {
	return fmt.Errorf("token %s: %w", id, ErrNotFound)
}

// findToken returns the index of the document's token id.
func (doc *fileDocument) findToken(id string) (int, error) {
	for i, t := range doc.Tokens {
		if t.ID == id {
			return i, nil
		}
	}
	return -1, tokenNotFound(id)
}

// edit returns doc.Tokens[i] for a change to write to: a token that the
// serving snapshot shares is replaced by a copy first, since requests
// read it without a lock.
func (doc *fileDocument) edit(i int) *Token {
	t := doc.Tokens[i]
	if doc.shared != nil && doc.shared.byID[t.ID] == t {
		c := t.clone()
		t = &c
		doc.Tokens[i] = t
	}
	return t
}

// revoke marks t revoked at at unless it already is by then (a revocation
// scheduled later is brought forward), and reports whether it changed t.
func revoke(t *Token, at time.Time) bool {
	if t.Revoked != nil && !t.Revoked.After(at) {
		return false
	}
	at = at.UTC()
	t.Revoked = &at
	return true
}

// RevokeToken implements Store.
func (s *FileStore) RevokeToken(ctx context.Context, id string, at time.Time) (Token, error) {
	if err := ctx.Err(); err != nil {
		return Token{}, err
	}
	snap, err := s.update(func(doc *fileDocument) error {
		i, err := doc.findToken(id)
		if err != nil {
			return err
		}
		if !revoke(doc.edit(i), at) {
			return errNoChange
		}
		return nil
	})
	if err != nil {
		return Token{}, err
	}
	return snap.byID[id].clone(), nil
}

// RevokeUserTokens implements Store. A user with no tokens (listed or
// not) has none to revoke: 0, not ErrNotFound.
func (s *FileStore) RevokeUserTokens(ctx context.Context, user string, at time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int
	_, err := s.update(func(doc *fileDocument) error {
		for i, t := range doc.Tokens {
			if t.User == user && revoke(doc.edit(i), at) {
				n++
			}
		}
		if n == 0 {
			return errNoChange
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// RotateToken implements Store: the new token and the old one's new
// expiry are one file write, so that no reader ever sees one without the
// other.
func (s *FileStore) RotateToken(ctx context.Context, id string, next Token, oldExpires time.Time) (Token, error) {
	if err := ctx.Err(); err != nil {
		return Token{}, err
	}
	if err := next.Prepare(); err != nil {
		return Token{}, invalidError{err}
	}
	snap, err := s.update(func(doc *fileDocument) error {
		i, err := doc.findToken(id)
		if err != nil {
			return err
		}
		if err := doc.checkNewID(next.ID); err != nil {
			return err
		}
		old := doc.edit(i)
		if old.Expires == nil || oldExpires.Before(*old.Expires) {
			at := oldExpires.UTC()
			old.Expires = &at
		}
		doc.Tokens = append(doc.Tokens, &next)
		return nil
	})
	if err != nil {
		return Token{}, err
	}
	return snap.byID[id].clone(), nil
}

// ListUsers implements Store.
func (s *FileStore) ListUsers(ctx context.Context) (map[string]User, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	users := s.current.Load().users
	out := make(map[string]User, len(users))
	for name, u := range users {
		out[name] = u.clone()
	}
	return out, nil
}

// PutUser implements Store. The name must be non-empty and free of
// control characters, and every group a non-empty string; errors name the
// field and match ErrInvalid.
func (s *FileStore) PutUser(ctx context.Context, name string, u User) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := ValidateUser(name, u); err != nil {
		return err
	}
	c := u.clone()
	c.joinedGroups = ""
	_, err := s.update(func(doc *fileDocument) error {
		if doc.Users == nil {
			doc.Users = make(map[string]*User)
		}
		doc.Users[name] = &c
		return nil
	})
	return err
}

// PutSettings implements Store.
func (s *FileStore) PutSettings(ctx context.Context, settings Settings) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	settings = settings.clone()
	_, err := s.update(func(doc *fileDocument) error {
		doc.Settings = settings
		return nil
	})
	return err
}

// add notes one use at at from ip (which may be the zero Addr: unknown).
func (u *pendingUse) add(at time.Time, ip netip.Addr) {
	if at.After(u.at) {
		u.at = at
	}
	if !ip.IsValid() {
		return
	}
	if i := slices.Index(u.ips, ip); i >= 0 {
		u.ips = slices.Delete(u.ips, i, i+1)
	} else if len(u.ips) == MaxLastIPs {
		u.ips = slices.Delete(u.ips, 0, 1)
	}
	u.ips = append(u.ips, ip)
}

// CreateToken implements Store.
func (s *FileStore) CreateToken(ctx context.Context, t Token) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.Prepare(); err != nil {
		return invalidError{err}
	}
	_, err := s.update(func(doc *fileDocument) error {
		if err := doc.checkNewID(t.ID); err != nil {
			return err
		}
		doc.Tokens = append(doc.Tokens, &t)
		return nil
	})
	return err
}

// checkNewID refuses an id that the document already has.
func (doc *fileDocument) checkNewID(id string) error {
	for _, have := range doc.Tokens {
		if have.ID == id {
			return fmt.Errorf("token %s already exists", id)
		}
	}
	return nil
}

// Close stops watching the file and writes pending last-use records.
func (s *FileStore) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.flushUses()
	})
	return nil
}

func (s *FileStore) loop() {
	defer close(s.done)
	poll := time.NewTicker(s.pollEvery)
	defer poll.Stop()
	flush := time.NewTicker(s.flushEvery)
	defer flush.Stop()
	var nextFlush time.Time
	for {
		select {
		case <-s.stop:
			return
		case <-poll.C:
			s.reloadIfChanged()
		case now := <-flush.C:
			if now.Before(nextFlush) {
				continue
			}
			s.flushUses()
			nextFlush = now.Add(flushSpacing * time.Since(now))
		}
	}
}

// reloadIfChanged rereads the file when its size or modification time
// changed, or, while the modification time is recent, when its contents
// did. A file that does not parse is reported once per change and the last
// good contents keep serving.
func (s *FileStore) reloadIfChanged() {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	stat, err := statFile(s.path)
	if err != nil {
		s.logger.Error("checking token store file", zap.String("file", s.path), zap.Error(err))
		return
	}
	stat.sum = s.seen.sum // a stat cannot tell; the contents are compared below
	if stat == s.seen && (!stat.exists || time.Since(stat.modTime) > racyStampWindow) {
		return
	}
	// Compare the contents before reading them into memory: in the
	// seconds after each write (the last-use flush's too) this runs every
	// poll, and a large file must not be decoded again when nothing
	// changed.
	stamp, err := hashStoreFile(s.path)
	if stamp == s.seen {
		return
	}
	var doc *fileDocument
	if err == nil && stamp.exists {
		// What is decoded is what counts: the file may have changed
		// since it was hashed.
		doc, stamp, err = readDocument(s.path)
	}
	s.seen = stamp
	if err == nil && !stamp.exists {
		s.logger.Error("token store file disappeared; still serving its last good contents", zap.String("file", s.path))
		return
	}
	var snap *fileSnapshot
	if err == nil {
		snap, err = doc.snapshot()
	}
	if err != nil {
		s.logger.Error("token store file not loaded; still serving its last good contents",
			zap.String("file", s.path), zap.Error(err))
		return
	}
	s.served = stamp.sum
	s.current.Store(snap)
	s.logger.Info("token store file reloaded", zap.String("file", s.path), zap.Int("tokens", len(snap.tokens)))
}

// flushUses writes the pending last-use records in one file write. If the
// write fails they are kept for the next try.
func (s *FileStore) flushUses() {
	uses := s.takeUses()
	if uses == nil {
		return
	}
	_, err := s.update(func(doc *fileDocument) error {
		for i, t := range doc.Tokens {
			if u, ok := uses[t.ID]; ok {
				u.applyTo(doc.edit(i))
			}
		}
		return nil
	})
	if err == nil {
		return
	}
	s.logger.Error("writing token last-use records; will retry", zap.String("file", s.path), zap.Error(err))
	s.restoreUses(uses)
}

// applyTo records u in t: the newest use time, and the client IPs newest
// first, merged with those already recorded.
func (u *pendingUse) applyTo(t *Token) {
	if t.LastUsed == nil || u.at.After(*t.LastUsed) {
		at := u.at.UTC()
		t.LastUsed = &at
	}
	ips := make([]string, 0, MaxLastIPs)
	for i := len(u.ips) - 1; i >= 0 && len(ips) < MaxLastIPs; i-- {
		ips = append(ips, u.ips[i].String())
	}
	for _, old := range t.LastIPs {
		if len(ips) == MaxLastIPs {
			break
		}
		if !slices.Contains(ips, old) {
			ips = append(ips, old)
		}
	}
	t.LastIPs = ips
}

// merge folds the newer record n into u.
func (u *pendingUse) merge(n *pendingUse) {
	if n.at.After(u.at) {
		u.at = n.at
	}
	for _, ip := range n.ips {
		if i := slices.Index(u.ips, ip); i >= 0 {
			u.ips = slices.Delete(u.ips, i, i+1)
		}
		u.ips = append(u.ips, ip)
	}
	if extra := len(u.ips) - MaxLastIPs; extra > 0 {
		u.ips = slices.Delete(u.ips, 0, extra)
	}
}

// errNoChange, returned by an update's change function, says that the
// document needs no write: update then succeeds without writing.
var errNoChange = errors.New("no change")

// update rereads the file, applies change, writes the result atomically
// and serves it; it returns once the change is on disk and in memory, with
// the snapshot that serves it. It holds the file's lock (filelock.go)
// from the read to the rename, so that a change made meanwhile by another
// process is in what it rereads, never overwritten. It refuses to write
// over a file it cannot parse: someone may be halfway through editing it,
// and their work must not be lost. If change returns errNoChange, nothing
// is written and the file as read is served (it is what the next poll
// would load anyway).
func (s *FileStore) update(change func(*fileDocument) error) (*fileSnapshot, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	unlock, err := lockFile(lockPath(s.path), s.lockWait)
	if err != nil {
		return nil, err
	}
	defer unlock()
	s.removeLeftoverTemps()
	doc, stamp, err := s.reread()
	if err != nil {
		return nil, err
	}
	if err := change(doc); errors.Is(err, errNoChange) {
		if stamp.exists {
			s.seen = stamp
			s.served = stamp.sum
			s.current.Store(doc.shared)
		}
		return doc.shared, nil
	} else if err != nil {
		return nil, err
	}
	snap, err := doc.snapshot()
	if err != nil {
		return nil, err
	}
	// The file is encoded straight into the temporary file, and hashed on
	// the way for the next poll: a large store is never held in memory as
	// one buffer.
	sum := sha256.New()
	err = s.writeFile(s.path, func(w io.Writer) error {
		sum.Reset()
		return doc.encode(io.MultiWriter(w, sum))
	})
	if err != nil {
		return nil, err
	}
	if s.seen, err = statFile(s.path); err != nil {
		return nil, err
	}
	sum.Sum(s.seen.sum[:0])
	s.served = s.seen.sum
	s.current.Store(snap)
	return snap, nil
}

// reread reads the file for update, with its lock held, and returns it
// as a document whose shared snapshot has checked it, and the stamp of
// what it read. When the file holds exactly the contents that the store
// serves (it is unchanged since this process last loaded or wrote it:
// same SHA-256), the document is made from the serving snapshot, sharing
// its tokens, instead of decoding the file again: for a large store that
// is most of a last-use write's cost.
func (s *FileStore) reread() (*fileDocument, fileStamp, error) {
	stamp, err := hashStoreFile(s.path)
	if err != nil {
		return nil, stamp, fmt.Errorf("not writing over it: %v", err)
	}
	if stamp.exists && stamp.sum == s.served {
		return s.current.Load().document(), stamp, nil
	}
	doc, stamp, err := readDocument(s.path)
	if err != nil {
		return nil, stamp, fmt.Errorf("not writing over it: %v", err)
	}
	// Check before change runs: change may assume every token is there
	// (a "null" entry would otherwise crash it).
	snap, err := doc.snapshot()
	if err != nil {
		return nil, stamp, fmt.Errorf("not writing over it: token store file %s: %v", s.path, err)
	}
	doc.shared = snap
	return doc, stamp, nil
}

// document returns the snapshot as a document to change, sharing its
// tokens and users (see fileDocument.edit).
func (snap *fileSnapshot) document() *fileDocument {
	return &fileDocument{
		Version:  fileFormatVersion,
		Users:    maps.Clone(snap.users),
		Tokens:   slices.Clone(snap.tokens),
		Settings: snap.settings.clone(),
		shared:   snap,
	}
}

// encode writes the document as json.MarshalIndent(doc, "", "  ") would,
// followed by a newline, but one token at a time, so that a large store is
// never one buffer in memory.
func (doc *fileDocument) encode(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// value writes v as MarshalIndent writes it inside the document:
	// every line but the first starts with prefix, and no newline ends
	// it.
	value := func(v any, prefix string) error {
		buf.Reset()
		enc.SetIndent(prefix, "  ")
		if err := enc.Encode(v); err != nil {
			return fmt.Errorf("encoding token store: %v", err)
		}
		_, err := bw.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
		return err
	}
	fmt.Fprintf(bw, "{\n  \"version\": %d", doc.Version)
	if len(doc.Users) > 0 {
		bw.WriteString(",\n  \"users\": ")
		if err := value(doc.Users, "  "); err != nil {
			return err
		}
	}
	bw.WriteString(",\n  \"tokens\": ")
	switch {
	case doc.Tokens == nil:
		bw.WriteString("null")
	case len(doc.Tokens) == 0:
		bw.WriteString("[]")
	default:
		bw.WriteString("[")
		for i, t := range doc.Tokens {
			if i > 0 {
				bw.WriteString(",")
			}
			bw.WriteString("\n    ")
			if err := value(t, "    "); err != nil {
				return err
			}
		}
		bw.WriteString("\n  ]")
	}
	// As the settings' omitzero tag says.
	if !reflect.ValueOf(doc.Settings).IsZero() {
		bw.WriteString(",\n  \"settings\": ")
		if err := value(doc.Settings, "  "); err != nil {
			return err
		}
	}
	bw.WriteString("\n}\n")
	return bw.Flush()
}

// readDocument reads and decodes the store file, and returns the stamp of
// the version it read (also when that does not decode): its stat and the
// SHA-256 of the very bytes decoded, taken from one open file so that they
// always match. A missing file is an empty document with a zero stamp.
// The file is decoded as it is read, never held in memory whole.
func readDocument(path string) (*fileDocument, fileStamp, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &fileDocument{Version: fileFormatVersion}, fileStamp{}, nil
	}
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("reading token store file: %v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("reading token store file: %v", err)
	}
	sum := sha256.New()
	r := io.TeeReader(bufio.NewReaderSize(f, 64<<10), sum)
	doc, decodeErr := decodeDocumentFrom(r)
	// The stamp covers the whole file also when decoding stopped early,
	// so that the poll reports a bad file once, not at every look.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fileStamp{}, fmt.Errorf("reading token store file: %v", err)
	}
	stamp := fileStamp{exists: true, size: fi.Size(), modTime: fi.ModTime()}
	sum.Sum(stamp.sum[:0])
	if decodeErr != nil {
		return nil, stamp, fmt.Errorf("token store file %s: %v", path, decodeErr)
	}
	return doc, stamp, nil
}

// hashStoreFile stamps the store file as readDocument does, without
// decoding it.
func hashStoreFile(path string) (fileStamp, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, fmt.Errorf("reading token store file: %v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fileStamp{}, fmt.Errorf("reading token store file: %v", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fileStamp{}, fmt.Errorf("reading token store file: %v", err)
	}
	stamp := fileStamp{exists: true, size: fi.Size(), modTime: fi.ModTime()}
	h.Sum(stamp.sum[:0])
	return stamp, nil
}

// decodeDocumentFrom decodes a store file as it reads it. Unknown fields
// are errors: a misspelt "allowed_ips" must not silently allow every
// address.
func decodeDocumentFrom(r io.Reader) (*fileDocument, error) {
	doc := new(fileDocument)
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := doc.decodeFields(dec); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	// dec.More would miss a stray '}' or ']' after the object.
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("invalid JSON: unexpected data after the top-level object")
	}
	switch {
	case doc.Version < 0:
		return nil, fmt.Errorf("format version %d is not valid", doc.Version)
	case doc.Version == 0:
		doc.Version = fileFormatVersion
	case doc.Version > fileFormatVersion:
		return nil, fmt.Errorf("format version %d is newer than this plugin understands (%d)", doc.Version, fileFormatVersion)
	}
	return doc, nil
}

// decodeFields decodes the top-level object one field, and one token, at
// a time: dec.Decode(doc) would first read the whole file into the
// decoder's ever-doubling buffer, which for a large store is more garbage
// than the store itself. It reads what dec.Decode(doc) would: field names
// match case-insensitively, a repeated field's last value wins (users and
// settings merge), and null is an empty document.
func (doc *fileDocument) decodeFields(dec *json.Decoder) error {
	start, err := dec.Token()
	if err != nil || start == nil {
		return err
	}
	if start != json.Delim('{') {
		return fmt.Errorf("the file must hold a JSON object")
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return err
		}
		name, _ := key.(string) // an object's keys are strings
		switch {
		case strings.EqualFold(name, "version"):
			err = dec.Decode(&doc.Version)
		case strings.EqualFold(name, "users"):
			err = dec.Decode(&doc.Users)
		case strings.EqualFold(name, "tokens"):
			err = doc.decodeTokens(dec)
		case strings.EqualFold(name, "settings"):
			err = dec.Decode(&doc.Settings)
		default:
			err = fmt.Errorf("json: unknown field %q", name)
		}
		if err != nil {
			return err
		}
	}
	_, err = dec.Token() // the closing '}'
	return err
}

// decodeTokens decodes the tokens array, one token at a time.
func (doc *fileDocument) decodeTokens(dec *json.Decoder) error {
	start, err := dec.Token()
	if err != nil || start == nil {
		doc.Tokens = nil
		return err
	}
	if start != json.Delim('[') {
		return fmt.Errorf("tokens must be an array")
	}
	doc.Tokens = []*Token{}
	for dec.More() {
		var t *Token
		if err := dec.Decode(&t); err != nil {
			return err
		}
		doc.Tokens = append(doc.Tokens, t)
	}
	_, err = dec.Token() // the closing ']'
	return err
}

// snapshot validates the document and indexes it for the request path.
// The snapshot takes the document's tokens and users as they are, without
// a copy: from now on the document must change them only through edit
// (update sets doc.shared to the snapshot that checked it). Tokens and
// users that doc.shared serves are checked already and are not touched.
func (doc *fileDocument) snapshot() (*fileSnapshot, error) {
	snap := &fileSnapshot{
		tokens:   make([]*Token, 0, len(doc.Tokens)),
		byID:     make(map[string]*Token, len(doc.Tokens)),
		byDigest: make(map[Digest]*Token, len(doc.Tokens)),
		slow:     make(map[string][]*Token),
		users:    make(map[string]*User, len(doc.Users)),
		settings: doc.Settings.clone(),
	}
	shared := doc.shared
	// Decoding gives every token its own copy of its user's name and its
	// scope; one copy each is enough.
	names := make(map[string]string)
	for i, t := range doc.Tokens {
		if t == nil {
			return nil, fmt.Errorf("tokens[%d] is null", i)
		}
		if shared == nil || shared.byID[t.ID] != t {
			if err := t.Prepare(); err != nil {
				return nil, fmt.Errorf("tokens[%d]: %v", i, err)
			}
			if name, ok := names[t.User]; ok {
				t.User = name
			} else {
				names[t.User] = t.User
			}
			switch t.Scope {
			case ScopeReadOnly:
				t.Scope = ScopeReadOnly
			case ScopeReadWrite:
				t.Scope = ScopeReadWrite
			}
		}
		if _, dup := snap.byID[t.ID]; dup {
			return nil, fmt.Errorf("tokens[%d]: duplicate token id %s", i, t.ID)
		}
		snap.tokens = append(snap.tokens, t)
		snap.byID[t.ID] = t
		if t.kind != kindSHA256 {
			// A slow hash is salted: it has no digest to index by, and
			// two equal secrets have different hashes anyway.
			snap.slow[t.User] = append(snap.slow[t.User], t)
			continue
		}
		if _, dup := snap.byDigest[t.digest]; dup {
			return nil, fmt.Errorf("tokens[%d]: token %s has the same hash as another token", i, t.ID)
		}
		snap.byDigest[t.digest] = t
	}
	snap.slowModel = SlowHashModel(hashesOf(snap.tokens))
	for name, u := range doc.Users {
		if shared != nil && u != nil && shared.users[name] == u {
			snap.users[name] = u
			continue
		}
		if u == nil {
			u = new(User)
		}
		c := u.clone()
		c.Prepare()
		snap.users[name] = &c
	}
	return snap, nil
}

func statFile(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileStamp{}, nil
	}
	if err != nil {
		return fileStamp{}, fmt.Errorf("token store file: %v", err)
	}
	return fileStamp{exists: true, size: fi.Size(), modTime: fi.ModTime()}, nil
}

// tempPrefix starts the name of writeFileAtomic's temporary files for
// the file at path.
func tempPrefix(path string) string { return "." + filepath.Base(path) + ".tmp-" }

// removeLeftoverTemps removes the temporary files of writes that a crash
// interrupted before their rename. Called with the file's lock held: every
// writer holds it while its temporary file exists, so any there now is
// left over. They are harmless but for the space and the old hashes they
// keep.
func (s *FileStore) removeLeftoverTemps() {
	dir := filepath.Dir(s.path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return // the write will report what is wrong with the directory
	}
	prefix := tempPrefix(s.path)
	for _, e := range entries {
		// os.CreateTemp puts digits where its pattern has "*".
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" {
			continue
		}
		name := filepath.Join(dir, e.Name())
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.logger.Warn("removing a temporary file left by an interrupted write", zap.String("file", name), zap.Error(err))
			continue
		}
		s.logger.Info("removed a temporary file left by an interrupted write", zap.String("file", name))
	}
}

// writeFileAtomic replaces path with what encode writes, readable by its
// owner only. It writes a temporary file in the same directory, syncs it
// and renames it over path, so that a crash leaves either the old file or
// the new one.
func writeFileAtomic(path string, encode func(io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, tempPrefix(path)+"*")
	if err != nil {
		return fmt.Errorf("writing token store file: %v", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("writing token store file: %v", err)
	}
	if err := encode(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("writing token store file: %v", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing token store file: %v", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing token store file: %v", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing token store file: %v", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // make the rename itself durable
		d.Close()
	}
	return nil
}

// Interface guard
var _ Store = (*FileStore)(nil)
