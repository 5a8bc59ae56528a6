package tokenstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// Intervals for most tests: a fast poll, and no automatic flush (tests
// call flushUses themselves, so that what is written when is certain).
const (
	testPollEvery = 5 * time.Millisecond
	noAutoFlush   = time.Hour
)

func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// openTestStore opens path with a fast poll and no automatic flush, and
// closes the store when the test ends.
func openTestStore(t *testing.T, path string) (*FileStore, *observer.ObservedLogs) {
	t.Helper()
	logger, logs := observedLogger()
	s, err := openFile(path, logger, testPollEvery, noAutoFlush)
	if err != nil {
		t.Fatalf("openFile(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s, logs
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// replaceFile swaps in new contents the way editors that save through a
// rename do, so that the store's poll never reads a half-written file
// unless the test writes one on purpose.
func replaceFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".edit"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// newTestToken makes a prepared read-write token for user.
func newTestToken(t *testing.T, user string) (Token, string) {
	t.Helper()
	tok, secret, err := NewToken(TokenRequest{User: user}, DefaultPrefix, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	return tok, secret
}

// docBytes encodes a store file holding tokens, written by hand rather
// than by the store.
func docBytes(t *testing.T, tokens ...Token) []byte {
	t.Helper()
	doc := fileDocument{Version: 1, Tokens: make([]*Token, len(tokens))}
	for i := range tokens {
		doc.Tokens[i] = &tokens[i]
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// decodeDocument decodes a store file's contents as the store decodes
// the file.
func decodeDocument(data []byte) (*fileDocument, error) {
	return decodeDocumentFrom(bytes.NewReader(data))
}

// decodeFile reads the store file as the store would.
func decodeFile(t *testing.T, path string) *fileDocument {
	t.Helper()
	doc, _, err := readDocument(path)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func fileToken(t *testing.T, doc *fileDocument, id string) *Token {
	t.Helper()
	for _, tok := range doc.Tokens {
		if tok.ID == id {
			return tok
		}
	}
	t.Fatalf("token %s not in the file", id)
	return nil
}

// tokenJSON writes one token record by hand; extra is spliced in before
// the closing brace.
func tokenJSON(id, hash, extra string) string {
	return fmt.Sprintf(`{"id": %q, "user": "alice", "scope": "read-only", "hash": %q, "created": "2025-01-01T00:00:00Z"%s}`, id, hash, extra)
}

func docJSON(tokens ...string) string {
	return `{"version": 1, "tokens": [` + strings.Join(tokens, ", ") + `]}`
}

// checkNoSecretsLogged fails if any log line mentions one of the strings
// (secrets or hashes, which §10 says are never logged).
func checkNoSecretsLogged(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(line, strings.TrimPrefix(s, "sha256:")) {
				t.Errorf("log line %q contains a secret or hash", line)
			}
		}
	}
}

func lookup(s *FileStore, secret string) (*Token, error) {
	return s.LookupToken(context.Background(), DigestOf(secret))
}

func TestFileStoreMissingFileThenCreate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens.json")
	s, logs := openTestStore(t, path)
	ctx := context.Background()

	if _, err := lookup(s, "cat_anything"); !errors.Is(err, ErrNotFound) {
		t.Errorf("LookupToken in an empty store: error %v, want ErrNotFound", err)
	}
	if u, err := s.LookupUser(ctx, "alice"); u != nil || err != nil {
		t.Errorf("LookupUser in an empty store = %v, %v; want nil, nil", u, err)
	}
	if st, err := s.Settings(ctx); err != nil || !st.TestEndpointOn() {
		t.Errorf("Settings in an empty store = %+v, %v; want defaults", st, err)
	}
	if got := s.Tokens(); len(got) != 0 {
		t.Errorf("Tokens() = %d tokens, want none", len(got))
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("opening a store created its file: %v", err)
	}
	if n := logs.FilterMessageSnippet("does not exist yet").FilterField(zap.String("file", path)).Len(); n != 1 {
		t.Errorf("%d log lines about the missing file naming it, want 1", n)
	}

	tok, secret := newTestToken(t, "alice")
	if err := s.CreateToken(ctx, tok); err != nil {
		t.Fatalf("CreateToken: %v", err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("CreateToken did not create the file: %v", err)
	}
	if mode := fi.Mode(); mode != 0o600 {
		t.Errorf("file mode %v, want -rw-------", mode)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"tokens.json", "tokens.json.lock"}) {
		t.Errorf("directory holds %q, want only tokens.json and its lock file (no temporary files)", names)
	}

	got, err := lookup(s, secret)
	if err != nil {
		t.Fatalf("LookupToken after CreateToken: %v", err)
	}
	if got.ID != tok.ID || got.User != "alice" || got.Digest() != DigestOf(secret) {
		t.Errorf("LookupToken = %+v, want token %s of alice", got, tok.ID)
	}

	data := readFile(t, path)
	if bytes.Contains(data, []byte(secret)) || bytes.Contains(data, []byte(secret[len(DefaultPrefix):])) {
		t.Errorf("the store file contains the secret:\n%s", data)
	}
	if !bytes.Contains(data, []byte(tok.Hash)) {
		t.Errorf("the store file does not contain the hash %s:\n%s", tok.Hash, data)
	}
	doc, err := decodeDocument(data)
	if err != nil {
		t.Fatalf("the written file does not decode: %v", err)
	}
	if doc.Version != 1 || len(doc.Tokens) != 1 || doc.Tokens[0].ID != tok.ID {
		t.Errorf("written document = version %d, %d tokens; want version 1 with token %s", doc.Version, len(doc.Tokens), tok.ID)
	}

	// Another store opening the file finds the token.
	other, _ := openTestStore(t, path)
	if _, err := lookup(other, secret); err != nil {
		t.Errorf("a second store does not find the created token: %v", err)
	}
	checkNoSecretsLogged(t, logs, secret, tok.Hash)
}

func TestFileStoreCreateTokenSetsMode(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, _ := newTestToken(t, "alice")
	if err := os.WriteFile(path, docBytes(t, a), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := openTestStore(t, path)
	b, secretB := newTestToken(t, "bob")
	if err := s.CreateToken(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o600 {
		t.Errorf("file mode after CreateToken %v, want -rw-------", fi.Mode())
	}
	doc := decodeFile(t, path)
	if len(doc.Tokens) != 2 || doc.Tokens[0].ID != a.ID || doc.Tokens[1].ID != b.ID {
		t.Errorf("file tokens after CreateToken are not [%s %s] in order", a.ID, b.ID)
	}
	if _, err := lookup(s, secretB); err != nil {
		t.Errorf("LookupToken(new token): %v", err)
	}
}

func TestFileStoreCreateTokenRefusals(t *testing.T) {
	t.Parallel()
	a, secretA := newTestToken(t, "alice")
	tests := []struct {
		name    string
		tok     func() Token
		wantErr string
	}{
		{"same id", func() Token {
			b, _ := newTestToken(t, "bob")
			b.ID = a.ID
			return b
		}, "already exists"},
		{"same hash", func() Token {
			b, _ := newTestToken(t, "bob")
			b.Hash = a.Hash
			return b
		}, "same hash"},
		{"no user", func() Token {
			b, _ := newTestToken(t, "bob")
			b.User = ""
			return b
		}, "user is empty"},
		{"bad allowed_ips", func() Token {
			b, _ := newTestToken(t, "bob")
			b.AllowedIPs = []string{"not-an-ip"}
			return b
		}, "allowed_ips"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			before := docBytes(t, a)
			if err := os.WriteFile(path, before, 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := openTestStore(t, path)
			bad := tt.tok()
			err := s.CreateToken(context.Background(), bad)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("CreateToken error = %v, want one containing %q", err, tt.wantErr)
			}
			if after := readFile(t, path); !bytes.Equal(after, before) {
				t.Errorf("a refused CreateToken changed the file:\n%s", after)
			}
			if got, err := lookup(s, secretA); err != nil || got.ID != a.ID || got.User != "alice" {
				t.Errorf("after a refused CreateToken, the existing token looks up as %+v, %v", got, err)
			}
			if got := s.Tokens(); len(got) != 1 {
				t.Errorf("after a refused CreateToken the store has %d tokens, want 1", len(got))
			}
		})
	}
}

func TestFileStoreOutsideEditDefaultPoll(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, _ := newTestToken(t, "alice")
	b, secretB := newTestToken(t, "bob")
	if err := os.WriteFile(path, docBytes(t, a), 0o600); err != nil {
		t.Fatal(err)
	}
	logger, _ := observedLogger()
	s, err := OpenFile(path, logger) // the default one-second poll
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := lookup(s, secretB); !errors.Is(err, ErrNotFound) {
		t.Fatalf("token found before it was added: %v", err)
	}

	replaceFile(t, path, docBytes(t, a, b))
	// The documented guarantee: an outside edit is served within about a
	// second. Two seconds is the bound this test holds the store to.
	waitFor(t, 2*time.Second, "an outside edit to be picked up", func() bool {
		_, err := lookup(s, secretB)
		return err == nil
	})
}

func TestFileStoreOutsideEdits(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, secretA := newTestToken(t, "alice")
	b, secretB := newTestToken(t, "bob")
	if err := os.WriteFile(path, docBytes(t, a), 0o600); err != nil {
		t.Fatal(err)
	}
	s, logs := openTestStore(t, path)
	ctx := context.Background()

	// Adding a token, a user and a setting.
	off := false
	doc := fileDocument{
		Version:  1,
		Users:    map[string]*User{"bob": {Groups: []string{"dev", "ops"}}},
		Tokens:   []*Token{&a, &b},
		Settings: Settings{TestEndpointEnabled: &off},
	}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	replaceFile(t, path, data)
	waitFor(t, 2*time.Second, "the added token", func() bool {
		_, err := lookup(s, secretB)
		return err == nil
	})
	u, err := s.LookupUser(ctx, "bob")
	if err != nil || u == nil || u.JoinedGroups() != "dev,ops" {
		t.Errorf("LookupUser(bob) = %+v, %v; want groups dev,ops, prepared", u, err)
	}
	if st, _ := s.Settings(ctx); st.TestEndpointOn() {
		t.Error("the test endpoint setting from the file was not loaded")
	}
	if n := logs.FilterMessage("token store file reloaded").Len(); n < 1 {
		t.Error("no INFO line for the reload")
	}

	// Revoking a token by hand.
	revoked := time.Date(2025, 1, 2, 0, 0, 0, 0, time.UTC)
	a.Revoked = &revoked
	replaceFile(t, path, docBytes(t, a, b))
	waitFor(t, 2*time.Second, "the revocation", func() bool {
		got, err := lookup(s, secretA)
		return err == nil && got.Revoked != nil && got.Revoked.Equal(revoked)
	})

	// Deleting a token by hand.
	replaceFile(t, path, docBytes(t, b))
	waitFor(t, 2*time.Second, "the deletion", func() bool {
		_, err := lookup(s, secretA)
		return errors.Is(err, ErrNotFound)
	})
	if _, err := lookup(s, secretB); err != nil {
		t.Errorf("the remaining token is gone: %v", err)
	}

	// The file disappearing keeps the last contents; its return reloads.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "an error about the missing file", func() bool {
		return logs.FilterMessageSnippet("disappeared").FilterField(zap.String("file", path)).Len() == 1
	})
	if _, err := lookup(s, secretB); err != nil {
		t.Errorf("a token disappeared with the file: %v", err)
	}
	replaceFile(t, path, docBytes(t, a))
	waitFor(t, 2*time.Second, "the recreated file", func() bool {
		_, errA := lookup(s, secretA)
		_, errB := lookup(s, secretB)
		return errA == nil && errors.Is(errB, ErrNotFound)
	})
	checkNoSecretsLogged(t, logs, secretA, secretB, a.Hash, b.Hash)
}

func TestFileStoreSameSizeRewrite(t *testing.T) {
	t.Parallel()
	// An edit that keeps the file's size, saved right after the previous
	// version: on most file systems both get the same modification time
	// (a clock tick or coarser), so size and time alone cannot tell them
	// apart. Here a scheduled revocation is brought forward to the past.
	for i := 0; i < 5; i++ {
		path := filepath.Join(t.TempDir(), "tokens.json")
		scheduled := `, "revoked": "2999-01-01T00:00:00Z"`
		now := `, "revoked": "2000-01-01T00:00:00Z"`
		if err := os.WriteFile(path, []byte(docJSON(tokenJSON("tokA", HashSecret("a"), scheduled))), 0o600); err != nil {
			t.Fatal(err)
		}
		s, _ := openTestStore(t, path)
		replaceFile(t, path, []byte(docJSON(tokenJSON("tokA", HashSecret("a"), now))))
		waitFor(t, 2*time.Second, "the same-size edit to be picked up", func() bool {
			tok, err := lookup(s, "a")
			return err == nil && !tok.Usable(time.Now())
		})
		s.Close()
	}
}

// badContents are store files that must never be served. hashA is the
// hash of the token that the good file holds.
func badContents(hashA, hashB string) []struct{ name, data, wantErr string } {
	good := tokenJSON("tokA", hashA, "")
	return []struct{ name, data, wantErr string }{
		{"invalid JSON", `{"version": 1, "tokens": [}`, "invalid JSON"},
		{"half-written", docJSON(good, tokenJSON("tokB", hashB, ""))[:len(docJSON(good))-20], "unexpected EOF"},
		{"empty", "", "invalid JSON"},
		{"not an object", `[]`, "invalid JSON"},
		{"trailing garbage", docJSON(good) + ` x`, "after the top-level object"},
		{"second object", docJSON(good) + `{}`, "after the top-level object"},
		{"extra closing brace", docJSON(good) + "}\n", "after the top-level object"},
		{"extra closing bracket", docJSON(good) + "]", "after the top-level object"},
		{"unknown top-level field", `{"version": 1, "token": [], "tokens": [` + good + `]}`, `unknown field "token"`},
		{"misspelt allowed_ips", docJSON(good, tokenJSON("tokB", hashB, `, "allowed_ip": ["10.0.0.0/8"]`)), `unknown field "allowed_ip"`},
		{"misspelt user field", `{"version": 1, "users": {"alice": {"group": ["dev"]}}, "tokens": [` + good + `]}`, `unknown field "group"`},
		{"misspelt setting", `{"version": 1, "settings": {"test_endpoint": false}, "tokens": [` + good + `]}`, `unknown field "test_endpoint"`},
		{"wrong type", `{"version": 1, "tokens": {}}`, "invalid JSON"},
		{"newer version", `{"version": 2, "tokens": [` + good + `]}`, "format version 2 is newer"},
		{"negative version", `{"version": -1, "tokens": [` + good + `]}`, "format version -1 is not valid"},
		{"duplicate ids", docJSON(good, tokenJSON("tokA", hashB, "")), "duplicate token id tokA"},
		{"duplicate hashes", docJSON(good, tokenJSON("tokB", hashA, "")), "same hash"},
		{"null token", docJSON(good, "null"), "tokens[1] is null"},
		{"token without user", docJSON(good, `{"id": "tokB", "scope": "read-only", "hash": "`+hashB+`"}`), "tokens[1]: token tokB: user is empty"},
		{"bad scope", docJSON(good, strings.Replace(tokenJSON("tokB", hashB, ""), "read-only", "readonly", 1)), "tokens[1]: token tokB: scope"},
		{"unknown hash scheme", docJSON(good, tokenJSON("tokB", "md5:0123456789abcdef0123456789abcdef", "")), "tokens[1]: token tokB: hash: unsupported hash scheme"},
		{"malformed bcrypt hash", docJSON(good, tokenJSON("tokB", "bcrypt:$2a$14$xyz", "")), "tokens[1]: token tokB: hash: malformed bcrypt hash"},
		{"bcrypt cost too high", docJSON(good, tokenJSON("tokB", "bcrypt:$2a$31$"+strings.Repeat("a", 53), "")), "tokens[1]: token tokB: hash: bcrypt cost 31"},
		{"malformed argon2id hash", docJSON(good, tokenJSON("tokB", "argon2id:$argon2id$v=19$m=47104,t=1,p=1$c2FsdA", "")), "tokens[1]: token tokB: hash: malformed argon2id hash"},
		{"argon2id with an empty key", docJSON(good, tokenJSON("tokB", "argon2id:$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0$", "")), "tokens[1]: token tokB: hash: argon2id hash: key has 0 bytes"},
		{"bad allowed_ips", docJSON(good, tokenJSON("tokB", hashB, `, "allowed_ips": ["10.0.0.0/33"]`)), "allowed_ips"},
		{"bad header name", docJSON(good, tokenJSON("tokB", hashB, `, "required_headers": {"X Team": "a"}`)), "required_headers"},
	}
}

func TestOpenFileRefusesBadFiles(t *testing.T) {
	t.Parallel()
	hashA, hashB := HashSecret("a"), HashSecret("b")
	for _, tt := range badContents(hashA, hashB) {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := openFile(path, nil, testPollEvery, noAutoFlush)
			if err == nil {
				s.Close()
				t.Fatalf("openFile accepted:\n%s", tt.data)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), strings.TrimPrefix(hashA, "sha256:")) || strings.Contains(err.Error(), strings.TrimPrefix(hashB, "sha256:")) {
				t.Errorf("error %q contains a token hash", err)
			}
		})
	}
}

func TestOpenFileAcceptsGoodFiles(t *testing.T) {
	t.Parallel()
	hashA := HashSecret("a")
	tests := []struct {
		name       string
		data       string
		wantTokens int
	}{
		{"empty object", `{}`, 0},
		{"no version", `{"tokens": [` + tokenJSON("tokA", hashA, "") + `]}`, 1},
		{"version 1", docJSON(tokenJSON("tokA", hashA, "")), 1},
		{"null tokens", `{"version": 1, "tokens": null}`, 0},
		{"null user", `{"version": 1, "users": {"alice": null}, "tokens": []}`, 0},
		{"trailing newline", docJSON(tokenJSON("tokA", hashA, "")) + "\n\n", 1},
		{"every field", docJSON(tokenJSON("tokA", hashA, `, "name": "ci", "expires": "2030-01-01T00:00:00Z", "revoked": "2029-01-01T00:00:00Z", "allowed_ips": ["10.0.0.0/8", "2001:db8::1"], "required_headers": {"X-Team": "a"}, "last_used": "2025-02-01T00:00:00Z", "last_ips": ["10.0.0.1"]`)), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			if err := os.WriteFile(path, []byte(tt.data), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := openFile(path, nil, testPollEvery, noAutoFlush)
			if err != nil {
				t.Fatalf("openFile refused:\n%s\n%v", tt.data, err)
			}
			defer s.Close()
			if got := len(s.Tokens()); got != tt.wantTokens {
				t.Errorf("%d tokens loaded, want %d", got, tt.wantTokens)
			}
			if tt.wantTokens > 0 {
				if _, err := lookup(s, "a"); err != nil {
					t.Errorf("LookupToken: %v", err)
				}
			}
		})
	}
	// A listed user with a null record is a user with no groups.
	path := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(path, []byte(`{"users": {"alice": null}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := openFile(path, nil, testPollEvery, noAutoFlush)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if u, _ := s.LookupUser(context.Background(), "alice"); u == nil || u.Disabled || len(u.Groups) != 0 {
		t.Errorf("LookupUser(alice) = %+v, want a listed user without groups", u)
	}
}

func TestFileStoreKeepsServingBadEdits(t *testing.T) {
	t.Parallel()
	hashA, hashB := HashSecret("a"), HashSecret("b")
	for _, tt := range badContents(hashA, hashB) {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			if err := os.WriteFile(path, []byte(docJSON(tokenJSON("tokA", hashA, ""))), 0o600); err != nil {
				t.Fatal(err)
			}
			s, logs := openTestStore(t, path)
			replaceFile(t, path, []byte(tt.data))
			// Filters copy the logs, so filter afresh on every check.
			errorLines := func() []observer.LoggedEntry {
				return logs.FilterLevelExact(zapcore.ErrorLevel).FilterField(zap.String("file", path)).All()
			}
			waitFor(t, 2*time.Second, "an ERROR line about the bad file", func() bool { return len(errorLines()) > 0 })
			e := errorLines()[0]
			if msg, _ := e.ContextMap()["error"].(string); !strings.Contains(msg, tt.wantErr) {
				t.Errorf("ERROR line %q, error %q: want the problem %q named", e.Message, msg, tt.wantErr)
			}
			if !strings.Contains(e.Message, "last good contents") {
				t.Errorf("ERROR line %q does not say the last good contents keep serving", e.Message)
			}
			got, err := lookup(s, "a")
			if err != nil || got.ID != "tokA" {
				t.Errorf("the last good token is no longer served: %+v, %v", got, err)
			}
			if got := s.Tokens(); len(got) != 1 {
				t.Errorf("%d tokens served, want the last good 1", len(got))
			}
			if _, err := s.LookupUser(context.Background(), "alice"); err != nil {
				t.Error(err)
			}
			checkNoSecretsLogged(t, logs, hashA, hashB)
		})
	}
}

func TestFileStoreBadFileLoggedOncePerChange(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, secretA := newTestToken(t, "alice")
	b, secretB := newTestToken(t, "bob")
	good := docBytes(t, a)
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	s, logs := openTestStore(t, path)
	errorCount := func() int {
		return logs.FilterLevelExact(zapcore.ErrorLevel).FilterField(zap.String("file", path)).Len()
	}
	errorLines := func() string {
		var out []string
		for _, e := range logs.All() {
			out = append(out, fmt.Sprint(e.Level, " ", e.Message, " ", e.ContextMap()))
		}
		return strings.Join(out, "\n")
	}

	// A corrupt file: one ERROR line, however many polls see it.
	replaceFile(t, path, []byte(`{"version": 1, "tokens": [ oops ]}`))
	waitFor(t, 2*time.Second, "the first ERROR line", func() bool { return errorCount() >= 1 })
	time.Sleep(30 * testPollEvery)
	if n := errorCount(); n != 1 {
		t.Fatalf("%d ERROR lines for one bad version of the file, want 1; logs:\n%s", n, errorLines())
	}
	if _, err := lookup(s, secretA); err != nil {
		t.Fatalf("last good token not served: %v", err)
	}

	// A half-written file (valid JSON cut short) is a new change: one more line.
	full := docBytes(t, a, b)
	replaceFile(t, path, full[:len(full)*2/3])
	waitFor(t, 2*time.Second, "the second ERROR line", func() bool { return errorCount() >= 2 })
	time.Sleep(30 * testPollEvery)
	if n := errorCount(); n != 2 {
		t.Fatalf("%d ERROR lines after two bad versions, want 2; logs:\n%s", n, errorLines())
	}
	e := logs.FilterLevelExact(zapcore.ErrorLevel).All()[1]
	if msg, _ := e.ContextMap()["error"].(string); !strings.Contains(msg, "unexpected EOF") || !strings.Contains(msg, path) {
		t.Errorf("ERROR line for the half-written file: %q, want the path and \"unexpected EOF\"", msg)
	}
	if _, err := lookup(s, secretB); !errors.Is(err, ErrNotFound) {
		t.Errorf("a token from the half-written file is served: %v", err)
	}

	// Fixing the file reloads it.
	replaceFile(t, path, full)
	waitFor(t, 2*time.Second, "the fixed file to load", func() bool {
		_, errA := lookup(s, secretA)
		_, errB := lookup(s, secretB)
		return errA == nil && errB == nil
	})
	if n := errorCount(); n != 2 {
		t.Errorf("%d ERROR lines after the fix, want still 2; logs:\n%s", n, errorLines())
	}
	checkNoSecretsLogged(t, logs, secretA, secretB, a.Hash, b.Hash)
}

func TestFileStoreDoesNotWriteOverBadFile(t *testing.T) {
	t.Parallel()
	hashA, hashB := HashSecret("a"), HashSecret("b")
	for _, tt := range badContents(hashA, hashB) {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "tokens.json")
			if err := os.WriteFile(path, []byte(docJSON(tokenJSON("tokA", hashA, ""))), 0o600); err != nil {
				t.Fatal(err)
			}
			s, _ := openTestStore(t, path)
			replaceFile(t, path, []byte(tt.data))

			c, secretC := newTestToken(t, "carol")
			if err := s.CreateToken(context.Background(), c); err == nil {
				t.Fatal("CreateToken wrote over a bad file")
			}
			if got := readFile(t, path); string(got) != tt.data {
				t.Errorf("the bad file was changed to:\n%s", got)
			}
			if _, err := lookup(s, secretC); !errors.Is(err, ErrNotFound) {
				t.Errorf("the refused token is served: %v", err)
			}
			if _, err := lookup(s, "a"); err != nil {
				t.Errorf("the last good token is not served: %v", err)
			}

			// Last-use records are not written over it either.
			s.RecordUse("tokA", time.Now(), netip.MustParseAddr("192.0.2.1"))
			s.flushUses()
			if got := readFile(t, path); string(got) != tt.data {
				t.Errorf("a flush changed the bad file to:\n%s", got)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if e.Name() != "tokens.json" && e.Name() != "tokens.json.lock" {
					t.Errorf("directory holds %s, want only the store file and its lock file", e.Name())
				}
			}
		})
	}
}

func TestFileStoreRecordUseBatching(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	zone := time.FixedZone("UTC+3", 3*3600)
	base := time.Date(2025, 3, 1, 10, 0, 0, 0, zone)
	a, secretA := newTestToken(t, "alice")
	olderUse := base.Add(-time.Hour).UTC()
	a.LastUsed, a.LastIPs = &olderUse, []string{"198.51.100.1"}
	b, _ := newTestToken(t, "bob")
	newerUse := base.Add(24 * time.Hour).UTC()
	b.LastUsed, b.LastIPs = &newerUse, []string{"192.0.2.1", "192.0.2.2"}
	c, _ := newTestToken(t, "carol")
	if err := os.WriteFile(path, docBytes(t, a, b, c), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ := openTestStore(t, path)
	before := readFile(t, path)

	// 100 uses of a from seven addresses in turn, then an older use from
	// the most recent address, then a newer use without a parsable address.
	ip := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i%7 + 1)}) }
	for i := 0; i < 100; i++ {
		s.RecordUse(a.ID, base.Add(time.Duration(i)*time.Second), ip(i))
	}
	s.RecordUse(a.ID, base, ip(99))
	newest := base.Add(200 * time.Second)
	s.RecordUse(a.ID, newest, netip.Addr{})
	// b: an older use than the file records, from an address it knows.
	s.RecordUse(b.ID, base, netip.MustParseAddr("192.0.2.2"))
	// A token that is not in the file.
	s.RecordUse("ghost", base, netip.MustParseAddr("192.0.2.9"))

	if after := readFile(t, path); !bytes.Equal(after, before) {
		t.Fatal("RecordUse wrote the file before a flush")
	}
	s.usesMu.Lock()
	if n := len(s.pending[a.ID].ips); n != MaxLastIPs {
		t.Errorf("%d addresses pending for a after 7 distinct ones, want at most %d", n, MaxLastIPs)
	}
	s.usesMu.Unlock()
	if got, _ := lookup(s, secretA); !got.LastUsed.Equal(olderUse) {
		t.Errorf("served last_used %v before a flush, want the file's %v", got.LastUsed, olderUse)
	}

	s.flushUses()
	doc := decodeFile(t, path)
	if len(doc.Tokens) != 3 {
		t.Fatalf("%d tokens after the flush, want 3 (no ghost)", len(doc.Tokens))
	}
	gotA := fileToken(t, doc, a.ID)
	if gotA.LastUsed == nil || !gotA.LastUsed.Equal(newest) || gotA.LastUsed.Location() != time.UTC {
		t.Errorf("a.last_used = %v, want %v in UTC", gotA.LastUsed, newest.UTC())
	}
	// Calls 95..99 came from 10.0.0.5, .6, .7, .1, .2; newest first.
	wantIPs := []string{"10.0.0.2", "10.0.0.1", "10.0.0.7", "10.0.0.6", "10.0.0.5"}
	if !slices.Equal(gotA.LastIPs, wantIPs) {
		t.Errorf("a.last_ips = %q, want %q", gotA.LastIPs, wantIPs)
	}
	if gotA.Hash != a.Hash || !gotA.Created.Equal(a.Created) || gotA.User != "alice" || gotA.Scope != a.Scope {
		t.Errorf("the flush changed other fields of a: %+v", gotA)
	}
	gotB := fileToken(t, doc, b.ID)
	if gotB.LastUsed == nil || !gotB.LastUsed.Equal(newerUse) {
		t.Errorf("b.last_used = %v, want the newer %v already in the file", gotB.LastUsed, newerUse)
	}
	if want := []string{"192.0.2.2", "192.0.2.1"}; !slices.Equal(gotB.LastIPs, want) {
		t.Errorf("b.last_ips = %q, want %q", gotB.LastIPs, want)
	}
	if gotC := fileToken(t, doc, c.ID); gotC.LastUsed != nil || gotC.LastIPs != nil {
		t.Errorf("c, never used, has last_used %v, last_ips %q", gotC.LastUsed, gotC.LastIPs)
	}
	if got, _ := lookup(s, secretA); got.LastUsed == nil || !got.LastUsed.Equal(newest) || !slices.Equal(got.LastIPs, wantIPs) {
		t.Errorf("the served token after a flush: last_used %v, last_ips %q", got.LastUsed, got.LastIPs)
	}

	// Nothing pending: a flush does not write.
	written := readFile(t, path)
	fi1, _ := os.Stat(path)
	s.flushUses()
	fi2, _ := os.Stat(path)
	if !bytes.Equal(readFile(t, path), written) || !fi1.ModTime().Equal(fi2.ModTime()) {
		t.Error("a flush with nothing pending rewrote the file")
	}

	// Later uses merge with the recorded ones, at most five, newest first.
	s.RecordUse(a.ID, newest.Add(time.Second), netip.MustParseAddr("10.0.0.6"))
	s.RecordUse(a.ID, newest.Add(2*time.Second), netip.MustParseAddr("2001:db8::1"))
	s.flushUses()
	gotA = fileToken(t, decodeFile(t, path), a.ID)
	if want := []string{"2001:db8::1", "10.0.0.6", "10.0.0.2", "10.0.0.1", "10.0.0.7"}; !slices.Equal(gotA.LastIPs, want) {
		t.Errorf("a.last_ips after a second flush = %q, want %q", gotA.LastIPs, want)
	}
}

func TestPendingUseMerge(t *testing.T) {
	t.Parallel()
	addrs := func(list ...string) []netip.Addr {
		out := make([]netip.Addr, len(list))
		for i, s := range list {
			out[i] = netip.MustParseAddr(s)
		}
		return out
	}
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		name         string
		older, newer pendingUse
		wantAt       time.Time
		wantIPs      []netip.Addr // oldest first
	}{
		{
			"newer later, disjoint",
			pendingUse{at: t0, ips: addrs("10.0.0.1", "10.0.0.2")},
			pendingUse{at: t0.Add(time.Second), ips: addrs("10.0.0.3")},
			t0.Add(time.Second), addrs("10.0.0.1", "10.0.0.2", "10.0.0.3"),
		},
		{
			"newer with an earlier time keeps the later one",
			pendingUse{at: t0.Add(time.Hour), ips: addrs("10.0.0.1")},
			pendingUse{at: t0, ips: nil},
			t0.Add(time.Hour), addrs("10.0.0.1"),
		},
		{
			"repeated address moves to newest",
			pendingUse{at: t0, ips: addrs("10.0.0.1", "10.0.0.2", "10.0.0.3")},
			pendingUse{at: t0, ips: addrs("10.0.0.1")},
			t0, addrs("10.0.0.2", "10.0.0.3", "10.0.0.1"),
		},
		{
			"more than five keeps the newest five",
			pendingUse{at: t0, ips: addrs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")},
			pendingUse{at: t0, ips: addrs("10.0.0.5", "10.0.0.6", "10.0.0.2")},
			t0, addrs("10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.2"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := tt.older
			u.ips = slices.Clone(u.ips)
			u.merge(&tt.newer)
			if !u.at.Equal(tt.wantAt) {
				t.Errorf("at = %v, want %v", u.at, tt.wantAt)
			}
			if !slices.Equal(u.ips, tt.wantIPs) {
				t.Errorf("ips = %v, want %v", u.ips, tt.wantIPs)
			}
		})
	}
}

func TestFileStorePeriodicFlush(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, _ := newTestToken(t, "alice")
	if err := os.WriteFile(path, docBytes(t, a), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := openFile(path, nil, testPollEvery, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	at := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	s.RecordUse(a.ID, at, netip.MustParseAddr("192.0.2.1"))
	waitFor(t, 2*time.Second, "the periodic flush", func() bool {
		doc, _, err := readDocument(path)
		if err != nil {
			return false
		}
		tok := fileToken(t, doc, a.ID)
		return tok.LastUsed != nil && tok.LastUsed.Equal(at) && slices.Equal(tok.LastIPs, []string{"192.0.2.1"})
	})
}

func TestFileStoreFailedFlushRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// during: the later uses arrive while the failing flush is
		// writing, rather than after it failed.
		during bool
	}{
		{"uses after the failure", false},
		{"uses during the failing write", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "tokens.json")
			a, _ := newTestToken(t, "alice")
			good := docBytes(t, a)
			if err := os.WriteFile(path, good, 0o600); err != nil {
				t.Fatal(err)
			}
			s, logs := openTestStore(t, path)
			base := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
			addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
			laterUses := func() {
				// One of them older than those of the failed flush.
				s.RecordUse(a.ID, base.Add(10*time.Second), addr(5))
				s.RecordUse(a.ID, base.Add(11*time.Second), addr(6))
				s.RecordUse(a.ID, base, addr(2))
			}

			for i := 1; i <= 4; i++ {
				s.RecordUse(a.ID, base.Add(time.Duration(i)*time.Second), addr(i))
			}
			corrupt := []byte(`{"version": 1, "tokens": [`)
			replaceFile(t, path, corrupt)
			if tt.during {
				// Hold the write lock so that the flush has taken the
				// pending uses but not yet tried the file.
				s.writeMu.Lock()
				flushed := make(chan struct{})
				go func() {
					s.flushUses()
					close(flushed)
				}()
				waitFor(t, 2*time.Second, "the flush to take the pending uses", func() bool {
					s.usesMu.Lock()
					defer s.usesMu.Unlock()
					return len(s.pending) == 0
				})
				laterUses()
				s.writeMu.Unlock()
				<-flushed
			} else {
				s.flushUses()
				laterUses()
			}
			if got := readFile(t, path); !bytes.Equal(got, corrupt) {
				t.Fatalf("a flush wrote over the corrupt file:\n%s", got)
			}
			failed := logs.FilterMessageSnippet("last-use").FilterLevelExact(zapcore.ErrorLevel).FilterField(zap.String("file", path))
			if failed.Len() != 1 {
				t.Errorf("%d ERROR lines about the failed flush naming the file, want 1", failed.Len())
			}

			replaceFile(t, path, good)
			s.flushUses()
			tok := fileToken(t, decodeFile(t, path), a.ID)
			if want := base.Add(11 * time.Second); tok.LastUsed == nil || !tok.LastUsed.Equal(want) {
				t.Errorf("last_used after the retried flush = %v, want %v", tok.LastUsed, want)
			}
			if want := []string{"10.0.0.2", "10.0.0.6", "10.0.0.5", "10.0.0.4", "10.0.0.3"}; !slices.Equal(tok.LastIPs, want) {
				t.Errorf("last_ips after the retried flush = %q, want %q", tok.LastIPs, want)
			}
		})
	}
}

func TestFileStoreCloseFlushes(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	a, _ := newTestToken(t, "alice")
	if err := os.WriteFile(path, docBytes(t, a), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := openFile(path, nil, testPollEvery, noAutoFlush)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	s.RecordUse(a.ID, at, netip.MustParseAddr("2001:db8::7"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	tok := fileToken(t, decodeFile(t, path), a.ID)
	if tok.LastUsed == nil || !tok.LastUsed.Equal(at) || !slices.Equal(tok.LastIPs, []string{"2001:db8::7"}) {
		t.Errorf("after Close: last_used %v, last_ips %q; want the pending use written", tok.LastUsed, tok.LastIPs)
	}
	select {
	case <-s.done:
	default:
		t.Error("Close returned with the watch loop still running")
	}
	if err := s.Close(); err != nil {
		t.Errorf("a second Close: %v", err)
	}
}

func TestPoolSharesStores(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	abs := filepath.Join(dir, "tokens.json")
	a, _ := newTestToken(t, "alice")
	if err := os.WriteFile(abs, docBytes(t, a), 0o600); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(wd, abs)
	if err != nil || filepath.IsAbs(rel) {
		t.Fatalf("no relative path to %s from %s: %q, %v", abs, wd, rel, err)
	}
	absCfg := Config{Type: TypeFile, Path: abs}
	relCfg := Config{Type: TypeFile, Path: rel}

	s1, err := Acquire(absCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Acquire(relCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s1 != s2 {
		t.Fatalf("Acquire with %q and %q opened two stores", abs, rel)
	}
	fs1, ok := s1.(*FileStore)
	if !ok {
		t.Fatalf("Acquire returned a %T, want *FileStore", s1)
	}
	if k1, _ := poolKey(Config{Type: TypeFile, Path: dir + "/./sub/../tokens.json"}); k1 != "file:"+abs {
		t.Errorf("poolKey of an unclean path = %q, want %q", k1, "file:"+abs)
	}

	if err := Release(relCfg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fs1.done:
		t.Fatal("the first Release closed a store still in use")
	default:
	}
	fs1.RecordUse(a.ID, time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC), netip.MustParseAddr("192.0.2.1"))
	if err := Release(absCfg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fs1.done:
	default:
		t.Fatal("the last Release did not close the store")
	}
	if tok := fileToken(t, decodeFile(t, abs), a.ID); tok.LastUsed == nil {
		t.Error("the last Release did not write the pending use")
	}

	s3, err := Acquire(relCfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s3 == s1 {
		t.Error("Acquire after the last Release returned the closed store")
	}
	if err := Release(absCfg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s3.(*FileStore).done:
	default:
		t.Error("the store acquired again was not closed by its Release")
	}
}

func TestPoolOpenErrors(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(path, []byte(`{"tokens": [`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Type: TypeFile, Path: path}
	if s, err := Acquire(cfg, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Acquire of a corrupt file = %v, %v; want an error naming the file", s, err)
	}
	// The failure is not cached: once fixed, the file opens.
	a, secretA := newTestToken(t, "alice")
	replaceFile(t, path, docBytes(t, a))
	s, err := Acquire(cfg, nil)
	if err != nil {
		t.Fatalf("Acquire after fixing the file: %v", err)
	}
	if _, err := s.LookupToken(context.Background(), DigestOf(secretA)); err != nil {
		t.Error(err)
	}
	if err := Release(cfg); err != nil {
		t.Fatal(err)
	}

	if _, err := Acquire(Config{Type: "sqlite", Path: path}, nil); err == nil {
		t.Error("Acquire of an unknown store type succeeded")
	}
	if err := Release(Config{}); err == nil {
		t.Error("Release of an invalid config succeeded")
	}
}

func TestConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		spec    string
		want    Config
		wantErr string
	}{
		{"file:/var/lib/caddy/tokens.json", Config{Type: TypeFile, Path: "/var/lib/caddy/tokens.json"}, ""},
		{"file:tokens.json", Config{Type: TypeFile, Path: "tokens.json"}, ""},
		{"file:C:/tokens.json", Config{Type: TypeFile, Path: "C:/tokens.json"}, ""},
		{"file:", Config{}, "want file:<path>"},
		{"tokens.json", Config{}, "want file:<path>"},
		{"", Config{}, "want file:<path>"},
		{"mysql:/x.db", Config{}, `unknown type "mysql"`},
		{":/x", Config{}, "type is required"},
		{"sqlite:/var/lib/caddy/tokens.db", Config{Type: TypeSQLite, Path: "/var/lib/caddy/tokens.db"}, ""},
		{"sqlite:", Config{}, "want file:<path>, sqlite:<path> or postgres:<dsn>"},
		{"postgres:postgres://caddy@db.example:5432/caddy", Config{Type: TypePostgres, DSN: "postgres://caddy@db.example:5432/caddy"}, ""},
		{"postgres:host=db.example user=caddy", Config{Type: TypePostgres, DSN: "host=db.example user=caddy"}, ""},
		{"postgres:", Config{}, "want file:<path>, sqlite:<path> or postgres:<dsn>"},
	}
	for _, tt := range tests {
		got, err := ParseSpec(tt.spec)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSpec(%q) error = %v, want one containing %q", tt.spec, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", tt.spec, got, err, tt.want)
		}
		if got.String() != tt.spec {
			t.Errorf("Config.String() = %q, want %q", got.String(), tt.spec)
		}
	}
	if err := (Config{Type: TypeFile}).Validate(); err == nil || !strings.Contains(err.Error(), "path is required") {
		t.Errorf("Validate without a path: %v", err)
	}
	if _, err := Open(Config{Type: "mysql", Path: "x"}, nil); err == nil {
		t.Error("Open of an unknown type succeeded")
	}
	s, err := Open(Config{Type: TypeFile, Path: filepath.Join(t.TempDir(), "tokens.json")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Kind() != TypeFile {
		t.Errorf("Kind() = %q, want %q", s.Kind(), TypeFile)
	}
}

// TestFileStoreConcurrency reads, records uses and creates tokens while the
// file is also rewritten from outside. Run with -race.
func TestFileStoreConcurrency(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "tokens.json")
	base, baseSecret := newTestToken(t, "alice")
	base.AllowedIPs = []string{"10.0.0.0/8"}
	base.RequiredHeaders = map[string]string{"X-Team": "blue"}
	doc := fileDocument{Version: 1, Users: map[string]*User{"alice": {Groups: []string{"dev"}}}, Tokens: []*Token{&base}}
	data, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	logger, _ := observedLogger()
	s, err := openFile(path, logger, time.Millisecond, 3*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	var (
		mu      sync.Mutex
		secrets []string // of tokens created through the store
	)
	stop := make(chan struct{})
	var background sync.WaitGroup

	for r := 0; r < 4; r++ {
		background.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tok, err := s.LookupToken(ctx, DigestOf(baseSecret))
				if err != nil {
					t.Errorf("the base token vanished during rewrites: %v", err)
					return
				}
				if tok.ID != base.ID || tok.Digest() != DigestOf(baseSecret) || !tok.AllowsIP(netip.MustParseAddr("10.1.1.1")) ||
					!slices.Equal(tok.RequiredHeaderNames(), []string{"X-Team"}) {
					t.Errorf("the base token was served wrongly: %+v", tok)
					return
				}
				_ = tok.Usable(time.Now())
				if tok.LastUsed != nil {
					_ = tok.LastUsed.String()
				}
				_ = len(tok.LastIPs)
				if u, _ := s.LookupUser(ctx, "alice"); u == nil || !u.InAnyGroup([]string{"dev"}) {
					t.Errorf("user alice served as %+v", u)
					return
				}
				_, _ = s.Settings(ctx)
				_ = s.Tokens()
				mu.Lock()
				var secret string
				if len(secrets) > 0 {
					secret = secrets[len(secrets)-1]
				}
				mu.Unlock()
				if secret != "" {
					if tok, err := s.LookupToken(ctx, DigestOf(secret)); err == nil && tok.Digest() != DigestOf(secret) {
						t.Errorf("token %s served for the wrong secret", tok.ID)
						return
					}
				}
			}
		})
	}
	for r := 0; r < 2; r++ {
		background.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s.RecordUse(base.ID, time.Now(), netip.AddrFrom4([4]byte{10, 0, byte(r), byte(i)}))
				time.Sleep(50 * time.Microsecond)
			}
		})
	}

	var writers sync.WaitGroup
	writers.Go(func() { // the server creating tokens
		for i := 0; i < 25; i++ {
			tok, secret, err := NewToken(TokenRequest{User: "alice"}, DefaultPrefix, time.Now(), 0)
			if err != nil {
				t.Error(err)
				return
			}
			if err := s.CreateToken(ctx, tok); err != nil {
				t.Errorf("CreateToken during outside edits: %v", err)
				return
			}
			mu.Lock()
			secrets = append(secrets, secret)
			mu.Unlock()
		}
	})
	writers.Go(func() { // an admin editing the file
		for i := 0; i < 25; i++ {
			doc, _, err := readDocument(path)
			if err != nil {
				t.Errorf("the store left a file that does not read back: %v", err)
				return
			}
			tok, _, err := NewToken(TokenRequest{User: "bob"}, DefaultPrefix, time.Now(), 0)
			if err != nil {
				t.Error(err)
				return
			}
			doc.Tokens = append(doc.Tokens, &tok)
			data, err := json.Marshal(doc)
			if err != nil {
				t.Error(err)
				return
			}
			tmp := fmt.Sprintf("%s.edit-%d", path, i)
			if err := os.WriteFile(tmp, data, 0o600); err != nil {
				t.Error(err)
				return
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	writers.Wait()
	close(stop)
	background.Wait()
	if t.Failed() {
		return
	}

	// Settle: one more write through the store makes its snapshot the
	// file's contents, whichever write came last.
	last, lastSecret := newTestToken(t, "alice")
	if err := s.CreateToken(ctx, last); err != nil {
		t.Fatal(err)
	}
	lastUse := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s.RecordUse(base.ID, lastUse, netip.MustParseAddr("192.0.2.99"))
	// Close stops the loop (whose flushes would otherwise race with this
	// last one) and writes what is pending.
	s.Close()
	final := decodeFile(t, path)
	snap, err := final.snapshot()
	if err != nil {
		t.Fatalf("the file after the concurrent writes is invalid: %v", err)
	}
	if got := len(s.Tokens()); got != len(snap.byDigest) {
		t.Errorf("the store serves %d tokens, the file holds %d", got, len(snap.byDigest))
	}
	for d := range snap.byDigest {
		if _, err := s.LookupToken(ctx, d); err != nil {
			t.Errorf("token %s of the file not served: %v", snap.byDigest[d].ID, err)
		}
	}
	if _, err := s.LookupToken(ctx, DigestOf(lastSecret)); err != nil {
		t.Error(err)
	}
	if tok := fileToken(t, final, base.ID); tok.LastUsed == nil || !tok.LastUsed.Equal(lastUse) ||
		len(tok.LastIPs) > MaxLastIPs || len(tok.LastIPs) == 0 || tok.LastIPs[0] != "192.0.2.99" {
		t.Errorf("base token after the uses: last_used %v, last_ips %q", tok.LastUsed, tok.LastIPs)
	}
}

// The store decodes its file a field and a token at a time; it must read
// every file as json.Decoder.Decode of the whole document does.
func TestFileDecodeAsWholeDocument(t *testing.T) {
	t.Parallel()
	tok := `{"id":"t1","user":"a","scope":"read-write","hash":"` + HashSecret("a") + `","created":"2026-01-01T00:00:00Z"}`
	tok2 := `{"id":"t2","user":"b","scope":"read-only","hash":"` + HashSecret("b") + `","created":"2026-01-01T00:00:00Z"}`
	for _, data := range []string{
		`null`,
		`{}`,
		`{"version":1,"tokens":null}`,
		`{"version":1,"tokens":[]}`,
		`{"version":1,"tokens":[` + tok + `,` + tok2 + `]}`,
		`{"Version":1,"TOKENS":[` + tok + `],"Users":{"a":{"groups":["x"]}},"SETTINGS":{"test_endpoint_enabled":false}}`,
		`{"tokens":[` + tok + `],"tokens":[` + tok2 + `]}`,
		`{"users":{"a":{}},"users":{"b":{"disabled":true}},"settings":{},"settings":{"test_endpoint_enabled":true}}`,
		`{"version":1,"tokens":[null]}`,
		`{"users":{"a":null},"tokens":[]}`,
		`{"version":null,"users":null,"settings":null,"tokens":[]}`,
	} {
		want := new(fileDocument)
		dec := json.NewDecoder(strings.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(want); err != nil {
			t.Fatalf("%s: json: %v", data, err)
		}
		if want.Version == 0 {
			want.Version = fileFormatVersion
		}
		got, err := decodeDocument([]byte(data))
		if err != nil {
			t.Errorf("%s: %v", data, err)
			continue
		}
		wantJSON, _ := json.Marshal(want)
		gotJSON, _ := json.Marshal(got)
		if !bytes.Equal(gotJSON, wantJSON) {
			t.Errorf("%s: decoded as %s, json.Decoder gives %s", data, gotJSON, wantJSON)
		}
	}
	for _, data := range []string{
		``, `[]`, `"x"`, `{"tokens":{}}`, `{"tokens":[` + tok + `}`, `{"tokens":[],}`, `{"token":[]}`,
		`{"tokens":[{"id":"t1","extra":1}]}`, `{"version":"1"}`, `{"tokens":[]}]`, `{"tokens":[]`,
	} {
		if _, err := decodeDocument([]byte(data)); err == nil || !strings.Contains(err.Error(), "invalid JSON") {
			t.Errorf("%s: got %v, want an invalid JSON error", data, err)
		}
	}
}
