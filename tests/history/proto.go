// SPDX-License-Identifier: BSD-3-Clause

package history

// The NBD protocol's numbers (doc/proto.md of the NBD project), as far
// as the server speaks it: fixed newstyle, NBD_OPT_GO/INFO/EXPORT_NAME/
// ABORT, simple replies only.
const (
	nbdMagic      = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic   = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic   = 0x0003e889045565a9
	nbdReqMagic   = 0x25609513
	nbdReplyMagic = 0x67446698

	nbdFlagFixedNewstyle = 1 << 0
	nbdFlagNoZeroes      = 1 << 1

	nbdOptExportName = 1
	nbdOptAbort      = 2
	nbdOptInfo       = 6
	nbdOptGo         = 7

	nbdRepAck         = 1
	nbdRepInfo        = 3
	nbdRepErrUnsup    = 1<<31 | 1
	nbdRepErrInvalid  = 1<<31 | 3
	nbdInfoExport     = 0
	nbdMaxOptionBytes = 64 << 10

	nbdFlagHasFlags        = 1 << 0
	nbdFlagSendFlush       = 1 << 2
	nbdFlagSendFUA         = 1 << 3
	nbdFlagSendTrim        = 1 << 5
	nbdFlagSendWriteZeroes = 1 << 6

	nbdCmdRead        = 0
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdCmdFlush       = 3
	nbdCmdTrim        = 4
	nbdCmdWriteZeroes = 6

	nbdCmdFlagFUA = 1 << 0

	nbdEPERM     = 1
	nbdEIO       = 5
	nbdEINVAL    = 22
	nbdESHUTDOWN = 108

	// nbdMaxRequest bounds a request's length: clients write at most a
	// few blocks.
	nbdMaxRequest = 32 << 20
)

// cmdName names a command for the log.
func cmdName(typ uint16) string {
	switch typ {
	case nbdCmdRead:
		return "read"
	case nbdCmdWrite:
		return "write"
	case nbdCmdDisc:
		return "disc"
	case nbdCmdFlush:
		return "flush"
	case nbdCmdTrim:
		return "trim"
	case nbdCmdWriteZeroes:
		return "zero"
	}
	return "cmd?"
}
