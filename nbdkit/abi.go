// SPDX-License-Identifier: BSD-3-Clause

package nbdkit

// Compile-time checks that this package's copies of nbdkit's constants
// equal abi.h's (which loader.c checks against nbdkit's own headers):
// an index other than 0 into a one-element array does not compile.

/*
#include "abi.h"
*/
import "C"

func _() {
	var x [1]struct{}
	_ = x[FlagMayTrim-C.NBDKITGO_FLAG_MAY_TRIM]
	_ = x[FlagFUA-C.NBDKITGO_FLAG_FUA]
	_ = x[FlagReqOne-C.NBDKITGO_FLAG_REQ_ONE]
	_ = x[FlagFastZero-C.NBDKITGO_FLAG_FAST_ZERO]
	_ = x[SerializeConnections-C.NBDKITGO_THREAD_MODEL_SERIALIZE_CONNECTIONS]
	_ = x[SerializeAllRequests-C.NBDKITGO_THREAD_MODEL_SERIALIZE_ALL_REQUESTS]
	_ = x[SerializeRequests-C.NBDKITGO_THREAD_MODEL_SERIALIZE_REQUESTS]
	_ = x[Parallel-C.NBDKITGO_THREAD_MODEL_PARALLEL]
	_ = x[FUANone-C.NBDKITGO_FUA_NONE]
	_ = x[FUAEmulate-C.NBDKITGO_FUA_EMULATE]
	_ = x[FUANative-C.NBDKITGO_FUA_NATIVE]
	_ = x[CacheNone-C.NBDKITGO_CACHE_NONE]
	_ = x[CacheEmulate-C.NBDKITGO_CACHE_EMULATE]
	_ = x[CacheNative-C.NBDKITGO_CACHE_NATIVE]
	_ = x[ExtentHole-C.NBDKITGO_EXTENT_HOLE]
	_ = x[ExtentZero-C.NBDKITGO_EXTENT_ZERO]
}
