// Package tandem calls the Tandem MoE runtime through its C ABI (cgo).
//
// Build with the installed tree visible to cgo, for example
//
//	CGO_CFLAGS="-I$PREFIX/include" CGO_LDFLAGS="-L$PREFIX/lib -ltandem" go build ./...
//
// (or PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig with the pkg-config tag: go build -tags pkgconfig).
// Models and sessions hold C memory: call Close when done. Errors are *Error values carrying
// the C status as a Kind plus the library's message; compare kinds with errors.Is(err, tandem.ErrIO).
package tandem

/*
#include <stdlib.h>
#include "tandem.h"

extern int32_t goTandemToken(int32_t id, char* text, size_t len, void* user);
static int32_t tandem_go_token_trampoline(int32_t id, const char* text, size_t len, void* user) {
	return goTandemToken(id, (char*)text, len, user);
}
static tandem_token_fn tandem_go_token_fn(void) { return tandem_go_token_trampoline; }
*/
import "C"

import (
	"fmt"
	"runtime/cgo"
	"unsafe"
)

// Kind mirrors tandem_status.
type Kind int

const (
	KindInvalidArgument Kind = C.TANDEM_STATUS_INVALID_ARGUMENT
	KindIO              Kind = C.TANDEM_STATUS_IO
	KindCorruptFile     Kind = C.TANDEM_STATUS_CORRUPT_FILE
	KindUnsupported     Kind = C.TANDEM_STATUS_UNSUPPORTED
	KindOutOfRange      Kind = C.TANDEM_STATUS_OUT_OF_RANGE
	KindOutOfMemory     Kind = C.TANDEM_STATUS_OUT_OF_MEMORY
	KindCancelled       Kind = C.TANDEM_STATUS_CANCELLED
	KindInternal        Kind = C.TANDEM_STATUS_INTERNAL
	KindBufferTooSmall  Kind = C.TANDEM_STATUS_BUFFER_TOO_SMALL
)

func (k Kind) String() string { return C.GoString(C.tandem_status_name(C.tandem_status(k))) }

// Error is a failed Tandem call.
type Error struct {
	Kind    Kind
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("tandem: %s: %s", e.Kind, e.Message) }

// Is lets errors.Is(err, tandem.ErrIO) match any *Error of that kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind && t.Message == ""
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument = &Error{Kind: KindInvalidArgument}
	ErrIO              = &Error{Kind: KindIO}
	ErrCorruptFile     = &Error{Kind: KindCorruptFile}
	ErrUnsupported     = &Error{Kind: KindUnsupported}
	ErrOutOfRange      = &Error{Kind: KindOutOfRange}
	ErrOutOfMemory     = &Error{Kind: KindOutOfMemory}
	ErrCancelled       = &Error{Kind: KindCancelled}
	ErrInternal        = &Error{Kind: KindInternal}
)

// check turns a status into nil or an *Error; call it through callLocked, on the calling thread.
func check(status C.tandem_status) error {
	if status == C.TANDEM_STATUS_OK {
		return nil
	}
	return &Error{Kind: Kind(status), Message: C.GoString(C.tandem_last_error())}
}

// ABIVersion is the ABI version of the loaded libtandem.
func ABIVersion() uint32 { return uint32(C.tandem_abi_version()) }

// LoadOptions are the load parameters; the zero value means the library's defaults.
type LoadOptions struct {
	Threads          int
	MaxContextTokens int64 // 0 = default
	Placement        string
	// StructSize overrides the params struct size (only for testing the ABI's checks); 0 = correct.
	StructSize uintptr
}

// Model is a loaded model; safe for concurrent reads (tokenize, sessions).
type Model struct {
	raw *C.tandem_model
}

// Load loads a GGUF file or an HF folder.
func Load(path string, options LoadOptions) (*Model, error) {
	cPath := C.CString(path)
	defer C.free(unsafe.Pointer(cPath))
	params := C.tandem_load_default_params()
	params.threads = C.int32_t(options.Threads)
	if options.MaxContextTokens > 0 {
		params.max_context_tokens = C.int64_t(options.MaxContextTokens)
	}
	if options.Placement != "" {
		cPlacement := C.CString(options.Placement)
		defer C.free(unsafe.Pointer(cPlacement))
		params.placement = cPlacement
	}
	if options.StructSize != 0 {
		params.struct_size = C.size_t(options.StructSize)
	}
	var raw *C.tandem_model
	if err := callLocked(func() C.tandem_status { return C.tandem_model_load(cPath, &params, &raw) }); err != nil {
		return nil, err
	}
	return &Model{raw: raw}, nil
}

// Close frees the model; close its sessions first. Safe to call twice.
func (m *Model) Close() error {
	if m.raw != nil {
		C.tandem_model_free(m.raw)
		m.raw = nil
	}
	return nil
}

// Architecture is config.json's model_type ("qwen3_moe", ...).
func (m *Model) Architecture() (string, error) {
	var info C.tandem_model_info
	info.struct_size = C.size_t(unsafe.Sizeof(info))
	if err := callLocked(func() C.tandem_status { return C.tandem_model_get_info(m.raw, &info) }); err != nil {
		return "", err
	}
	return C.GoString(info.architecture), nil
}

// Tokenize encodes UTF-8 text to token ids.
func (m *Model) Tokenize(text string, addSpecial bool) ([]int32, error) {
	cText := C.CString(text)
	defer C.free(unsafe.Pointer(cText))
	special := C.int32_t(0)
	if addSpecial {
		special = 1
	}
	var count C.size_t
	status := C.tandem_tokenize(m.raw, cText, C.size_t(len(text)), special, nil, 0, &count)
	if status != C.TANDEM_STATUS_BUFFER_TOO_SMALL && status != C.TANDEM_STATUS_OK {
		return nil, callLocked(func() C.tandem_status {
			return C.tandem_tokenize(m.raw, cText, C.size_t(len(text)), special, nil, 0, &count)
		})
	}
	ids := make([]int32, int(count)+1)
	err := callLocked(func() C.tandem_status {
		return C.tandem_tokenize(m.raw, cText, C.size_t(len(text)), special, (*C.int32_t)(&ids[0]), count, &count)
	})
	if err != nil {
		return nil, err
	}
	return ids[:count], nil
}

// Session is one sequence with its KV cache; use it from one goroutine at a time.
type Session struct {
	raw   *C.tandem_session
	model *Model
}

// NewSession opens a session on the model.
func (m *Model) NewSession() (*Session, error) {
	var raw *C.tandem_session
	if err := callLocked(func() C.tandem_status { return C.tandem_session_new(m.raw, &raw) }); err != nil {
		return nil, err
	}
	return &Session{raw: raw, model: m}, nil
}

// Close frees the session. Safe to call twice.
func (s *Session) Close() error {
	if s.raw != nil {
		C.tandem_session_free(s.raw)
		s.raw = nil
	}
	return nil
}

// Cancel stops a running Generate from another goroutine.
func (s *Session) Cancel() error {
	return callLocked(func() C.tandem_status { return C.tandem_session_cancel(s.raw) })
}

// GenerateOptions control Generate; Temperature 0 is greedy.
type GenerateOptions struct {
	MaxNewTokens int
	StopAtEOS    bool
	Temperature  float32
	Seed         uint64
	// OnToken, when set, receives each token and its text; returning false stops.
	OnToken func(id int32, text string) bool
}

//export goTandemToken
func goTandemToken(id C.int32_t, text *C.char, length C.size_t, user unsafe.Pointer) C.int32_t {
	options := cgo.Handle(*(*uintptr)(user)).Value().(*GenerateOptions)
	if options.OnToken(int32(id), C.GoStringN(text, C.int(length))) {
		return 0
	}
	return 1
}

// Generate continues after prompt and returns the new ids.
func (s *Session) Generate(prompt []int32, options GenerateOptions) ([]int32, error) {
	if options.MaxNewTokens <= 0 {
		return nil, &Error{Kind: KindInvalidArgument, Message: "MaxNewTokens must be > 0"}
	}
	sampling := (*C.tandem_sampler_params)(C.malloc(C.size_t(unsafe.Sizeof(C.tandem_sampler_params{}))))
	defer C.free(unsafe.Pointer(sampling))
	*sampling = C.tandem_sampler_default_params()
	sampling.temperature = C.float(options.Temperature)
	sampling.seed = C.uint64_t(options.Seed)
	params := C.tandem_generate_default_params()
	params.max_new_tokens = C.int64_t(options.MaxNewTokens)
	params.sampling = sampling
	params.stop_at_eos = 0
	if options.StopAtEOS {
		params.stop_at_eos = 1
	}
	if options.OnToken != nil {
		// C may not keep Go pointers: pass a handle in C memory instead.
		handle := cgo.NewHandle(&options)
		defer handle.Delete()
		user := (*uintptr)(C.malloc(C.size_t(unsafe.Sizeof(uintptr(0)))))
		defer C.free(unsafe.Pointer(user))
		*user = uintptr(handle)
		params.on_token = C.tandem_go_token_fn()
		params.user_data = unsafe.Pointer(user)
	}
	// Prompt and output in C memory, so the callback may run Go code freely while C holds them.
	promptBytes := C.size_t(len(prompt)+1) * 4
	cPrompt := (*C.int32_t)(C.malloc(promptBytes))
	defer C.free(unsafe.Pointer(cPrompt))
	copy(unsafe.Slice((*int32)(unsafe.Pointer(cPrompt)), len(prompt)+1), prompt)
	cOut := (*C.int32_t)(C.malloc(C.size_t(options.MaxNewTokens) * 4))
	defer C.free(unsafe.Pointer(cOut))
	var count C.size_t
	err := callLocked(func() C.tandem_status {
		return C.tandem_session_generate(s.raw, cPrompt, C.size_t(len(prompt)), &params, cOut,
			C.size_t(options.MaxNewTokens), &count, nil)
	})
	ids := make([]int32, int(count))
	copy(ids, unsafe.Slice((*int32)(unsafe.Pointer(cOut)), int(count)))
	return ids, err
}
