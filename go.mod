module nbdkit-nbd-go-plugin

go 1.19
