// Command greedy prints the greedy continuation ids of a prompt.
// Usage: greedy MODEL_PATH PROMPT MAX_NEW_TOKENS
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"tandem.dev/bindings/tandem"
)

func run(path, prompt string, maxNewTokens int) ([]int32, error) {
	model, err := tandem.Load(path, tandem.LoadOptions{Threads: 1})
	if err != nil {
		return nil, err
	}
	defer model.Close()
	session, err := model.NewSession()
	if err != nil {
		return nil, err
	}
	defer session.Close()
	ids, err := model.Tokenize(prompt, true)
	if err != nil {
		return nil, err
	}
	// Streaming: the callback sees every id (and -1 with the final text), in order.
	var streamed []int32
	onToken := func(id int32, text string) bool {
		if id >= 0 {
			streamed = append(streamed, id)
		}
		return true
	}
	out, err := session.Generate(ids, tandem.GenerateOptions{MaxNewTokens: maxNewTokens, OnToken: onToken})
	if err == nil && fmt.Sprint(out) != fmt.Sprint(streamed) {
		err = fmt.Errorf("streamed ids %v differ from returned ids %v", streamed, out)
	}
	return out, err
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: greedy MODEL_PATH PROMPT MAX_NEW_TOKENS")
		os.Exit(2)
	}
	maxNewTokens, err := strconv.Atoi(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, "MAX_NEW_TOKENS:", err)
		os.Exit(2)
	}
	ids, err := run(os.Args[1], os.Args[2], maxNewTokens)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	words := make([]string, len(ids))
	for i, id := range ids {
		words[i] = strconv.Itoa(int(id))
	}
	fmt.Println(strings.Join(words, " "))
}
