package tandem

// #include "tandem.h"
import "C"

import "runtime"

// callLocked runs one C call and reads tandem_last_error() on the same OS thread: the message is
// thread-local in C, and Go may move a goroutine between threads between two cgo calls.
func callLocked(call func() C.tandem_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return check(call())
}
