// Command xcaddybuild builds a Caddy binary with this repository's plugin,
// as described by a JSON-encoded xcaddy.Builder (the repository's
// xcaddy.json).
//
// It uses xcaddy as a library instead of the xcaddy command because the
// command cannot be installed here: `go install ...@version` reads the
// module's version list, which the module proxy does not serve. This
// program lives in its own nested module so that xcaddy (pinned exactly
// in go.mod) never becomes a dependency of the plugin module itself.
//
// Usage (normally via scripts/build-caddy.sh):
//
//	go -C internal/xcaddybuild run . -config /abs/xcaddy.json -output /abs/caddy
//
// -config defaults to "xcaddy.json" and -output to "caddy", both relative
// to the working directory; note that `go -C dir run` runs the program in
// dir, so pass absolute paths there.
//
// Relative paths inside the config (replacement targets such as ".",
// pgo_profile, embed_dir dirs) are resolved against the config file's own
// directory, so the committed file works in any clone. xcaddy itself would
// use them as-is, and its temporary build module lives elsewhere.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/caddyserver/xcaddy"
)

func main() {
	config := flag.String("config", "xcaddy.json", "path to the JSON-encoded xcaddy.Builder")
	output := flag.String("output", "caddy", "path of the Caddy binary to write")
	flag.Parse()

	// Cancel on Ctrl-C/SIGTERM so xcaddy stops its go commands and still
	// removes its temporary build folder.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := run(ctx, *config, *output); err != nil {
		fmt.Fprintln(os.Stderr, "xcaddybuild:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, configPath, output string) error {
	builder, err := loadBuilder(configPath)
	if err != nil {
		return err
	}
	return builder.Build(ctx, output)
}

// loadBuilder decodes the config and makes its relative paths absolute,
// relative to the config file's directory.
func loadBuilder(configPath string) (xcaddy.Builder, error) {
	var b xcaddy.Builder
	data, err := os.ReadFile(configPath)
	if err != nil {
		return b, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	// A misspelt field would otherwise be silently ignored and yield a
	// Caddy binary without the plugin.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, fmt.Errorf("decoding %s: %w", configPath, err)
	}

	dir, err := filepath.Abs(filepath.Dir(configPath))
	if err != nil {
		return b, err
	}
	for i, r := range b.Replacements {
		// Only directory targets are rewritten; "module@version" targets
		// are left alone.
		if isRelativeDir(string(r.New)) {
			b.Replacements[i].New = xcaddy.ReplacementPath(filepath.Join(dir, string(r.New)))
		}
	}
	if b.PgoProfile != "" && !filepath.IsAbs(b.PgoProfile) {
		b.PgoProfile = filepath.Join(dir, b.PgoProfile)
	}
	for i, e := range b.EmbedDirs {
		if e.Dir != "" && !filepath.IsAbs(e.Dir) {
			b.EmbedDirs[i].Dir = filepath.Join(dir, e.Dir)
		}
	}
	return b, nil
}

// isRelativeDir reports whether a replacement target is a relative
// directory, using the go.mod rule (golang.org/x/mod/modfile.IsDirectoryPath):
// only "." and ".." or paths starting with "./" or "../" are directories;
// anything else without a leading separator is a module path.
func isRelativeDir(p string) bool {
	p = filepath.ToSlash(p)
	return p == "." || p == ".." || strings.HasPrefix(p, "./") || strings.HasPrefix(p, "../")
}
