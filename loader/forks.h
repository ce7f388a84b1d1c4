/* SPDX-License-Identifier: BSD-3-Clause
 *
 * See forks.c. */
#ifndef NBDKITGO_FORKS_H
#define NBDKITGO_FORKS_H

/* 0 if nbdkit will certainly not fork after config_complete, else 1;
 * *why says why, for a debug message.  Renamed out of nbdkit's
 * namespace (forks.c, which includes this file, defines it under the
 * old name) and kept out of the .so's exports.
 */
#define nbdkit_may_fork nbdkitgo_may_fork
__attribute__ ((visibility ("hidden"))) int nbdkit_may_fork (const char **why);

#endif
