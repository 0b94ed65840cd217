// llama.cpp's numbers for one GGUF file, through @fugood/llama.node (llama.cpp built for
// linux-x64 CPU): prompt processing of an N-token prompt, single-sequence greedy decode and
// 32 sequences decoded together (its parallel mode: 32 slots, one batch per step), medians of R
// runs, as JSON on stdout.
//
//   node bench.mjs MODEL.gguf THREADS PROMPT_TOKENS DECODE_TOKENS REPS
import { loadModel } from '@fugood/llama.node'

const [model, threadsArg, promptArg, decodeArg, repsArg] = process.argv.slice(2)
const threads = Number(threadsArg), promptTokens = Number(promptArg)
const decodeTokens = Number(decodeArg), reps = Number(repsArg)
const median = (v) => { const s = [...v].sort((a, b) => a - b); const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2 }

const t0 = Date.now()
const ctx = await loadModel({ model, n_ctx: 2048, n_batch: 512, n_threads: threads, n_gpu_layers: 0 })
const loadMs = Date.now() - t0
// The same fixed text as bench/decode_bench.cc's --prompt-tokens, cut to N tokens.
let text = ''
for (let i = 0; i < 200; ++i) {
  text += 'Once upon a time, in a small town by the sea, a girl named Lily found a box of old letters. '
}
const ids = Array.from((await ctx.tokenize(text)).tokens).slice(0, promptTokens - 1)
const prompt = await ctx.detokenize(ids)
const pp = [], tg = []
let promptN = 0
for (let r = 0; r < reps + 1; ++r) {
  // A fresh prompt each time (no cache reuse): a different first word.
  const p = await ctx.completion({ prompt: `Run ${r}. ` + prompt, n_predict: 1, temperature: 0,
    top_k: 1, ignore_eos: true, cache_prompt: false })
  const d = await ctx.completion({ prompt: 'Once upon a time', n_predict: decodeTokens,
    temperature: 0, top_k: 1, ignore_eos: true, cache_prompt: false })
  if (r === 0) continue  // warm-up
  promptN = p.timings.prompt_n
  pp.push(p.timings.prompt_per_second)
  tg.push(d.timings.predicted_per_second)
}
// 32 sequences at once: tokens/s over the wall time of all 32 (short prompts, so decode
// dominates), as kvserve's decode_bench measures its 32-sequence row.
const par = []
{
  // A context of its own: 32 slots of 256 tokens each.
  const pctx = await loadModel({ model, n_ctx: 32 * 256, n_batch: 512, n_parallel: 32,
    n_threads: threads, n_gpu_layers: 0 })
  if (await pctx.parallel.enable({ n_parallel: 32, n_batch: 512 })) {
    const prompts = ['Once upon a time', 'The little dog', 'Lily and Ben went',
      'One day, a big bird', 'Tom had a red ball']
    for (let r = 0; r < reps + 1; ++r) {
      const start = Date.now()
      const jobs = []
      for (let i = 0; i < 32; ++i) {
        const { promise } = await pctx.parallel.completion({ prompt: prompts[i % 5],
          n_predict: decodeTokens, temperature: 0, top_k: 1, ignore_eos: true })
        jobs.push(promise)
      }
      const results = await Promise.all(jobs)
      const seconds = (Date.now() - start) / 1000
      const generated = results.reduce((n, x) => n + (x.tokens_predicted ?? decodeTokens), 0)
      if (r > 0) par.push(generated / seconds)
    }
    pctx.parallel.disable()
  }
  await pctx.release()
}
console.log(JSON.stringify({ engine: 'llama.cpp (@fugood/llama.node 1.7.15)', model, threads,
  load_ms: loadMs, prompt_tokens: promptN, prompt_tokens_per_s: median(pp),
  decode_tokens: decodeTokens, decode_tokens_per_s: median(tg),
  decode32_tokens_per_s: par.length ? median(par) : null, rss_mib: process.memoryUsage().rss / 1048576 }))
await ctx.release()
