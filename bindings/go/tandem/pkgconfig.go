//go:build pkgconfig

package tandem

// #cgo pkg-config: tandem
import "C"
