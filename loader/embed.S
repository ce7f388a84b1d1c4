/* SPDX-License-Identifier: BSD-3-Clause
 *
 * The Go library, carried inside the loader so that users copy one file.
 * GO_LIBRARY is its path at build time (see Makefile).
 */
	.section .rodata
	.balign 4096
	.globl nbdkitgo_library
	.hidden nbdkitgo_library
nbdkitgo_library:
	.incbin GO_LIBRARY
	.globl nbdkitgo_library_end
	.hidden nbdkitgo_library_end
nbdkitgo_library_end:
	.section .note.GNU-stack,"",@progbits
