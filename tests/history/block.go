// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Every block a client writes says who wrote it: a 32-byte unit (magic,
// the op's id, the block's index, and the three xored), repeated to fill
// the block, so that a read or the final storage tells which op's data a
// block holds, and a block made of two writes' pieces, or written to the
// wrong place, is told from both.  client.py writes and checks the same
// format.
const (
	blockSize  = 4096
	unitSize   = 32
	blockMagic = 0x4e42444849535421 // "NBDHIST!"
)

// Values of a block, as reads and the final storage report them: zero,
// the id of the op whose data it holds (> 0), or garbage.
const (
	valueZero    int64 = 0
	valueGarbage int64 = -1
)

// blockData is what op id writes in block b.
func blockData(id int64, b int) []byte {
	var unit [unitSize]byte
	binary.LittleEndian.PutUint64(unit[0:], blockMagic)
	binary.LittleEndian.PutUint64(unit[8:], uint64(id))
	binary.LittleEndian.PutUint64(unit[16:], uint64(b))
	binary.LittleEndian.PutUint64(unit[24:], blockMagic^uint64(id)^uint64(b))
	return bytes.Repeat(unit[:], blockSize/unitSize)
}

var zeroBlock = make([]byte, blockSize)

// blockValue says what block b holds: valueZero, an op id, or
// valueGarbage.
func blockValue(data []byte, b int) int64 {
	if bytes.Equal(data, zeroBlock) {
		return valueZero
	}
	if id, ok := blockHeader(data); ok && bytes.Equal(data, blockData(id, b)) {
		return id
	}
	return valueGarbage
}

// blockHeader reads the op id of a block's first unit, if it is one.
func blockHeader(data []byte) (int64, bool) {
	if len(data) < unitSize || binary.LittleEndian.Uint64(data) != blockMagic {
		return 0, false
	}
	id := binary.LittleEndian.Uint64(data[8:])
	b := binary.LittleEndian.Uint64(data[16:])
	if binary.LittleEndian.Uint64(data[24:]) != blockMagic^id^b || int64(id) <= 0 {
		return 0, false
	}
	return int64(id), true
}

// describeBlock says what a garbage block looks like, for a report.
func describeBlock(data []byte) string {
	n := 32
	if len(data) < n {
		n = len(data)
	}
	return fmt.Sprintf("first bytes %x", data[:n])
}
