module tandem.dev/bindings

go 1.19
