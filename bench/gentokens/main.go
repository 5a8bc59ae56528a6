// Command gentokens makes the token stores and the credential lists that
// scripts/bench-load.sh needs. It is a benchmark helper, not part of the
// plugin: nothing imports it.
//
// Usage:
//
//	gentokens store -type file -path tokens.json -n 1000
//	gentokens store -type sqlite -path tokens.db -realm bench -n 1000
//	gentokens store -type postgres -dsn postgres://… -realm bench -n 1000
//	gentokens headers -kind unknown|garbage|badsum|basic [-n 100000] [-prefix cat_] [-user bench]
//	gentokens apikey
//	gentokens open -path tokens.json
//
// store writes n tokens of user "bench" into a new store and prints the
// secret of one of them (the only secret the benchmark needs). A file
// store is written in one go as the store file's JSON; creating 100,000
// tokens one by one through the store would rewrite the file each time.
//
// headers prints n Authorization header values, one per line, for the wrk
// script bench/wrk/cycle.lua to cycle through:
//
//	unknown  Bearer tokens with the prefix and a valid checksum that no
//	         store holds: they pass the checksum and are looked up
//	garbage  Bearer tokens without the prefix (38 base62 characters);
//	         these are looked up as well (imported tokens have no prefix)
//	badsum   Bearer tokens with the prefix and a wrong checksum: refused
//	         before any look-up
//	basic    Basic credentials of -user with random passwords
//	apikey   72 random base62 characters with the first 24 of -key (the
//	         part caddy-security looks keys up by): a wrong secret for a
//	         known API key
//
// apikey prints one random 72-character API key for caddy-security.
//
// open loads a store file with tokenstore.OpenFile, as Caddy does when it
// provisions the handler, and prints "<milliseconds> <live heap bytes
// added>": the store's own share of Caddy's start-up and memory.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/caddy-apitoken/caddy-apitoken/tokenstore"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gentokens store|headers|apikey|open [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "store":
		err = runStore(os.Args[2:])
	case "headers":
		err = runHeaders(os.Args[2:])
	case "open":
		err = runOpen(os.Args[2:])
	case "apikey":
		var key string
		key, err = randomBase62(72)
		fmt.Println(key)
	default:
		err = fmt.Errorf("unknown command %q (want store, headers, apikey or open)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gentokens:", err)
		os.Exit(1)
	}
}

// benchUser owns every generated token.
const benchUser = "bench"

func runStore(args []string) error {
	fs := flag.NewFlagSet("store", flag.ExitOnError)
	kind := fs.String("type", "file", "store type: file, sqlite or postgres")
	path := fs.String("path", "", "store file or SQLite database (a new one)")
	dsn := fs.String("dsn", "", "PostgreSQL DSN")
	realm := fs.String("realm", "default", "realm of the tokens (SQL stores)")
	n := fs.Int("n", 1000, "number of tokens")
	fs.Parse(args)
	if *n < 1 {
		return errors.New("-n must be at least 1")
	}

	now := time.Now()
	tokens := make([]tokenstore.Token, *n)
	var secret string
	for i := range tokens {
		t, s, err := tokenstore.NewToken(tokenstore.TokenRequest{
			User: benchUser,
			Name: fmt.Sprintf("bench-%d", i),
		}, tokenstore.DefaultPrefix, now, 0)
		if err != nil {
			return err
		}
		tokens[i] = t
		// The middle one, so that no store is helped by finding it first.
		if i == *n/2 {
			secret = s
		}
	}

	switch *kind {
	case tokenstore.TypeFile:
		if err := writeFileStore(*path, tokens); err != nil {
			return err
		}
	case tokenstore.TypeSQLite, tokenstore.TypePostgres:
		if err := fillSQLStore(*kind, *path, *dsn, *realm, tokens); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-type %q: want file, sqlite or postgres", *kind)
	}
	fmt.Println(secret)
	return nil
}

// writeFileStore writes tokens as a store file (README "The file store"),
// mode 0600 like the plugin's own writes.
func writeFileStore(path string, tokens []tokenstore.Token) error {
	if path == "" {
		return errors.New("-path is required")
	}
	doc := struct {
		Version int                `json:"version"`
		Tokens  []tokenstore.Token `json:"tokens"`
	}{1, tokens}
	data, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

func fillSQLStore(kind, path, dsn, realm string, tokens []tokenstore.Token) error {
	var (
		s   *tokenstore.SQLStore
		err error
	)
	if kind == tokenstore.TypeSQLite {
		s, err = tokenstore.OpenSQLite(path, realm, nil)
	} else {
		s, err = tokenstore.OpenPostgres(dsn, realm, nil)
	}
	if err != nil {
		return err
	}
	defer s.Close()
	ctx := context.Background()
	for _, t := range tokens {
		if err := s.CreateToken(ctx, t); err != nil {
			return err
		}
	}
	return s.Close()
}

func runOpen(args []string) error {
	fs := flag.NewFlagSet("open", flag.ExitOnError)
	path := fs.String("path", "", "store file")
	fs.Parse(args)

	before := liveHeap()
	start := time.Now()
	s, err := tokenstore.OpenFile(*path, nil)
	if err != nil {
		return err
	}
	elapsed := time.Since(start)
	after := liveHeap()
	fmt.Println(elapsed.Milliseconds(), int64(after)-int64(before))
	// Keep the store reachable until its heap has been counted.
	return s.Close()
}

// liveHeap returns the bytes of live heap objects after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func runHeaders(args []string) error {
	fs := flag.NewFlagSet("headers", flag.ExitOnError)
	kind := fs.String("kind", "unknown", "unknown, garbage, badsum, basic or apikey")
	n := fs.Int("n", 100000, "number of lines")
	prefix := fs.String("prefix", tokenstore.DefaultPrefix, "token prefix")
	user := fs.String("user", benchUser, "Basic username")
	key := fs.String("key", "", "the valid API key whose first 24 characters to keep (apikey)")
	fs.Parse(args)
	if *kind == "apikey" && len(*key) < 24 {
		return errors.New("-key: want the valid API key (at least 24 characters)")
	}

	// Buffered: 100,000 unbuffered writes would dominate the run time.
	w := bufio.NewWriter(os.Stdout)
	for range *n {
		var line string
		switch *kind {
		case "unknown":
			s, err := tokenstore.GenerateSecret(*prefix)
			if err != nil {
				return err
			}
			line = "Bearer " + s
		case "garbage":
			s, err := randomBase62(38)
			if err != nil {
				return err
			}
			line = "Bearer " + s
		case "badsum":
			s, err := tokenstore.GenerateSecret(*prefix)
			if err != nil {
				return err
			}
			line = "Bearer " + breakChecksum(s, *prefix)
		case "basic":
			pw, err := randomBase62(24)
			if err != nil {
				return err
			}
			line = "Basic " + base64.StdEncoding.EncodeToString([]byte(*user+":"+pw))
		case "apikey":
			rest, err := randomBase62(48)
			if err != nil {
				return err
			}
			line = (*key)[:24] + rest
		default:
			return fmt.Errorf("-kind %q: want unknown, garbage, badsum, basic or apikey", *kind)
		}
		w.WriteString(line)
		w.WriteByte('\n')
	}
	return w.Flush()
}

// breakChecksum changes the last checksum character of a generated token,
// so that the checksum no longer matches (CRC-32 in base62 determines
// every character, so any change breaks it).
func breakChecksum(secret, prefix string) string {
	b := []byte(secret)
	last := len(b) - 1
	if b[last] == 'A' {
		b[last] = 'B'
	} else {
		b[last] = 'A'
	}
	if !tokenstore.PlausibleSecret(string(b), prefix) {
		return string(b)
	}
	panic("breakChecksum: token still plausible")
}

const base62Alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// randomBase62 returns n characters drawn from base62Alphabet; a small
// modulo bias does not matter for benchmark input.
func randomBase62(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = base62Alphabet[int(b[i])%len(base62Alphabet)]
	}
	return string(b), nil
}
