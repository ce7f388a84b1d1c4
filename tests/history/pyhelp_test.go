// SPDX-License-Identifier: BSD-3-Clause

package history

import (
	"encoding/hex"
	"os/exec"
	"strconv"
)

// runPython runs a script under python3 and returns what it printed.
func runPython(script string) (string, error) {
	out, err := exec.Command(python3, "-c", script).CombinedOutput()
	return string(out), err
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func hexString(b []byte) string { return hex.EncodeToString(b) }
