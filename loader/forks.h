/* See forks.c. */
#ifndef NBDKITGO_FORKS_H
#define NBDKITGO_FORKS_H

/* 0 if nbdkit will certainly not fork after config_complete, else 1;
 * *why says why, for a debug message.
 */
int nbdkit_may_fork (const char **why);

#endif
