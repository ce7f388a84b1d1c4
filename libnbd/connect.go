// SPDX-License-Identifier: BSD-3-Clause

package libnbd

/*
#include <stdlib.h>
#include "gonbd.h"
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

// ConnectUnix connects to a server's Unix socket.
func (h *Handle) ConnectUnix(path string) error {
	return h.setString("nbd_connect_unix", path, func(c *C.struct_gonbd, s *C.char, e *C.struct_gonbd_err) C.int {
		return C.gonbd_connect_unix(c, s, e)
	})
}

// ConnectTCP connects to host:port; port may be a service name.
func (h *Handle) ConnectTCP(host, port string) error {
	ch, cp := C.CString(host), C.CString(port)
	defer C.free(unsafe.Pointer(ch))
	defer C.free(unsafe.Pointer(cp))
	return h.check("nbd_connect_tcp", func(e *C.struct_gonbd_err) C.int { return C.gonbd_connect_tcp(h.c, ch, cp, e) })
}

// ConnectVsock connects over AF_VSOCK.
func (h *Handle) ConnectVsock(cid, port uint32) error {
	return h.check("nbd_connect_vsock", func(e *C.struct_gonbd_err) C.int {
		return C.gonbd_connect_vsock(h.c, C.uint32_t(cid), C.uint32_t(port), e)
	})
}

// ConnectURI connects to an NBD URI (nbd://, nbds+unix://, ...).
func (h *Handle) ConnectURI(uri string) error {
	return h.setString("nbd_connect_uri", uri, func(c *C.struct_gonbd, s *C.char, e *C.struct_gonbd_err) C.int {
		return C.gonbd_connect_uri(c, s, e)
	})
}

// ConnectSocket talks NBD over an already-connected socket.
func (h *Handle) ConnectSocket(fd int) error {
	return h.check("nbd_connect_socket", func(e *C.struct_gonbd_err) C.int { return C.gonbd_connect_socket(h.c, C.int(fd), e) })
}

// ConnectSystemdSocketActivation runs argv as a server, handing it a
// listening socket the systemd way, and connects to it.
func (h *Handle) ConnectSystemdSocketActivation(argv []string) error {
	cargv := make([]*C.char, len(argv)+1)
	for i, a := range argv {
		cargv[i] = C.CString(a)
		defer C.free(unsafe.Pointer(cargv[i]))
	}
	arr := (**C.char)(C.malloc(C.size_t(len(cargv)) * C.size_t(unsafe.Sizeof(cargv[0]))))
	defer C.free(unsafe.Pointer(arr))
	copy(unsafe.Slice(arr, len(cargv)), cargv)
	return h.check("nbd_connect_systemd_socket_activation", func(e *C.struct_gonbd_err) C.int {
		return C.gonbd_connect_systemd_socket_activation(h.c, arr, e)
	})
}

// OptGo ends option negotiation and enters transmission.
func (h *Handle) OptGo() error {
	return h.check("nbd_opt_go", func(e *C.struct_gonbd_err) C.int { return C.gonbd_opt_go(h.c, e) })
}

// OptInfo asks for the current export's details without entering
// transmission.
func (h *Handle) OptInfo() error {
	return h.check("nbd_opt_info", func(e *C.struct_gonbd_err) C.int { return C.gonbd_opt_info(h.c, e) })
}

// OptAbort ends option negotiation and the connection.
func (h *Handle) OptAbort() error {
	return h.check("nbd_opt_abort", func(e *C.struct_gonbd_err) C.int { return C.gonbd_opt_abort(h.c, e) })
}

// Export is one export a server lists.
type Export struct{ Name, Description string }

// OptList lists the server's exports.
func (h *Handle) OptList() ([]Export, error) {
	var list []Export
	ref := cgo.NewHandle(&list)
	defer ref.Delete()
	err := h.check("nbd_opt_list", func(e *C.struct_gonbd_err) C.int { return C.gonbd_opt_list(h.c, C.uintptr_t(ref), e) })
	return list, err
}

//export gonbdListed
func gonbdListed(ref C.uintptr_t, name, description *C.char) {
	list := cgo.Handle(ref).Value().(*[]Export)
	*list = append(*list, Export{C.GoString(name), C.GoString(description)})
}
