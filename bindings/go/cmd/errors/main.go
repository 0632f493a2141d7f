// Command errors checks that failures surface as typed errors with the library's message.
// Usage: errors MODEL_PATH   (exits non-zero when an error has the wrong kind or no message)
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"tandem.dev/bindings/tandem"
)

func expect(what string, err error, sentinel *tandem.Error, needle string) bool {
	var typed *tandem.Error
	if !errors.As(err, &typed) || !errors.Is(err, sentinel) || !strings.Contains(typed.Message, needle) {
		fmt.Fprintf(os.Stderr, "FAIL %s: got %v, expected kind %s mentioning %q\n", what, err, sentinel.Kind, needle)
		return false
	}
	fmt.Printf("ok: %s -> %s: %s\n", what, typed.Kind, typed.Message)
	return true
}

func load(path string, options tandem.LoadOptions) error {
	model, err := tandem.Load(path, options)
	if err == nil {
		model.Close()
	}
	return err
}

func main() {
	modelPath := os.Args[1]
	dir, err := os.MkdirTemp("", "tandem-go")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	corrupt := filepath.Join(dir, "corrupt.gguf")
	if err := os.WriteFile(corrupt, []byte("GGUF\x03\x00\x00\x00not a model at all"), 0o644); err != nil {
		panic(err)
	}
	ok := expect("missing file", load("/nonexistent/tandem-model", tandem.LoadOptions{}), tandem.ErrIO,
		"/nonexistent/tandem-model")
	ok = expect("corrupt file", load(corrupt, tandem.LoadOptions{}), tandem.ErrCorruptFile, "corrupt.gguf") && ok
	ok = expect("bad struct_size", load(modelPath, tandem.LoadOptions{StructSize: 3}), tandem.ErrInvalidArgument,
		"struct_size") && ok
	if !ok {
		os.Exit(1)
	}
}
