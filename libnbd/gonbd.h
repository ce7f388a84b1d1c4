/* SPDX-License-Identifier: BSD-3-Clause
 *
 * C side of the libnbd binding.
 *
 * libnbd keeps its last error message and errno per thread, and a later
 * cgo call may run on another thread, so every call that can fail goes
 * through a wrapper here that reads the error in the same C call
 * (capture) and hands it back in a struct gonbd_err.
 */
#ifndef GONBD_H
#define GONBD_H

#include <stdint.h>
#include <libnbd.h>

struct gonbd_err {
  char *msg;                    /* malloc'd; freed by Go */
  int errnum;
};

/* A handle, with what connecting with a deadline needs (connect.c). */
struct gonbd {
  struct nbd_handle *nbd;
  int64_t timeout_ms;           /* for connecting; 0: none */
  int opt_done, opt_error;      /* gonbd_opt_go's completion */
};

/* handle.c, and connect.c for connect_* and opt_go */
struct gonbd *gonbd_create (struct gonbd_err *err);
void gonbd_close (struct gonbd *g);
int gonbd_set_export_name (struct gonbd *g, const char *name, struct gonbd_err *err);
int gonbd_add_meta_context (struct gonbd *g, const char *name, struct gonbd_err *err);
int gonbd_set_full_info (struct gonbd *g, int b, struct gonbd_err *err);
int gonbd_set_pread_initialize (struct gonbd *g, int b, struct gonbd_err *err);
int gonbd_set_opt_mode (struct gonbd *g, int b, struct gonbd_err *err);
int gonbd_set_tls (struct gonbd *g, int mode, struct gonbd_err *err);
int gonbd_set_tls_certificates (struct gonbd *g, const char *dir, struct gonbd_err *err);
int gonbd_set_tls_verify_peer (struct gonbd *g, int b, struct gonbd_err *err);
int gonbd_set_tls_username (struct gonbd *g, const char *name, struct gonbd_err *err);
int gonbd_set_tls_psk_file (struct gonbd *g, const char *file, struct gonbd_err *err);
int gonbd_set_debug (struct gonbd *g, int b, uintptr_t go_callback, struct gonbd_err *err);
int gonbd_connect_unix (struct gonbd *g, const char *path, struct gonbd_err *err);
int gonbd_connect_tcp (struct gonbd *g, const char *host, const char *port, struct gonbd_err *err);
int gonbd_connect_vsock (struct gonbd *g, uint32_t cid, uint32_t port, struct gonbd_err *err);
int gonbd_connect_uri (struct gonbd *g, const char *uri, struct gonbd_err *err);
int gonbd_connect_socket (struct gonbd *g, int fd, struct gonbd_err *err);
int gonbd_connect_systemd_socket_activation (struct gonbd *g, char **argv, struct gonbd_err *err);
int gonbd_opt_go (struct gonbd *g, struct gonbd_err *err);
int gonbd_opt_info (struct gonbd *g, struct gonbd_err *err);
int gonbd_opt_abort (struct gonbd *g, struct gonbd_err *err);
int gonbd_opt_list (struct gonbd *g, uintptr_t go_list, struct gonbd_err *err);
int64_t gonbd_get_size (struct gonbd *g, struct gonbd_err *err);
int64_t gonbd_get_block_size (struct gonbd *g, int which, struct gonbd_err *err);
int gonbd_get_flag (struct gonbd *g, int which, struct gonbd_err *err);
int gonbd_can_meta_context (struct gonbd *g, const char *name, struct gonbd_err *err);
char *gonbd_get_export_description (struct gonbd *g, struct gonbd_err *err);
char *gonbd_get_canonical_export_name (struct gonbd *g, struct gonbd_err *err);
int gonbd_supports_tls (struct gonbd *g);
int gonbd_supports_uri (struct gonbd *g);
int gonbd_is_dead (struct gonbd *g);

/* Flags that gonbd_get_flag reads. */
enum gonbd_flag {
  GONBD_IS_READ_ONLY, GONBD_CAN_FLUSH, GONBD_CAN_FUA, GONBD_IS_ROTATIONAL,
  GONBD_CAN_TRIM, GONBD_CAN_ZERO, GONBD_CAN_FAST_ZERO,
  GONBD_CAN_MULTI_CONN, GONBD_CAN_CACHE,
};

void gonbd_capture (struct gonbd_err *err);
int64_t gonbd_now_ms (void);     /* CLOCK_MONOTONIC, for deadlines */
int64_t gonbd_deadline (struct gonbd *g); /* now + timeout, or -1 */
struct nbd_handle *gonbd_release (struct gonbd *g);

#endif
