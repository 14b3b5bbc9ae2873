from ddpm_bench.cli import main

raise SystemExit(main())
