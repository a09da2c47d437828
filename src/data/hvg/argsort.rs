//! numpy's `argsort` (default kind) as it runs on x86-64 with AVX-512, emulated exactly, so that
//! genes with equal normalised variances rank as they do in scanpy.
//!
//! Genes with identical counts in a batch (say, one UMI in one cell) get exactly equal normalised
//! variances, and scanpy ranks them with numpy's default `argsort`, which is not stable: the order
//! among equal values is whatever the sort leaves. Ties near rank `n_top_genes` change the chosen
//! genes, so this module reproduces numpy's argsort as it runs on x86-64 with AVX-512 (Intel's
//! x86-simd-sort, with its libstdc++ `std::sort` fallback). scanpy's own answer depends on the CPU:
//! numpy on an AVX2-only machine, or with SIMD disabled, orders ties differently, and on the same
//! data chooses 12 to 14 different genes.

/// `np.argsort(x)` (default kind) as numpy 2.x computes it on an x86-64 CPU with AVX-512: Intel's
/// x86-simd-sort `avx512_argsort<double>`, emulated lane for lane. Its quicksort is not stable, and
/// seurat_v3 ranks genes by such an argsort, so genes with exactly equal normalised variances (genes
/// with identical counts in a batch are common) are ordered the way this algorithm leaves them.
/// Reproducing that order is what makes the chosen genes identical to scanpy's on such a machine.
/// (numpy on a CPU without AVX-512 uses other sorts and orders ties otherwise, so scanpy's own
/// choice differs between machines by a few genes.) Inputs must not contain NaN.
pub fn argsort_numpy_avx512(arr: &[f64]) -> Vec<usize> {
    let n = arr.len();
    let mut arg: Vec<usize> = (0..n).collect();
    // std::is_sorted with `a < b`: no element smaller than its predecessor.
    let sorted = arr
        .windows(2)
        .all(|w| w[1] >= w[0] || w[1].is_nan() || w[0].is_nan());
    if n > 1 && !sorted {
        let max_iters = 2 * (n as f64).log2() as usize;
        xss::argsort(arr, &mut arg, 0, n - 1, max_iters);
    }
    arg
}

mod xss {
    //! A scalar emulation of x86-simd-sort's AVX-512 argsort for 64-bit keys (8 lanes): the
    //! quicksort with median-of-8 pivots and compress-store partitions, and the bitonic networks for
    //! the base case of at most 256 elements. Lane `i` of a register is element `i`.

    type K = [f64; 8];
    type I = [usize; 8];

    #[inline]
    fn min(a: f64, b: f64) -> f64 {
        // _mm512_min_pd(a, b): a < b ? a : b.
        if a < b {
            a
        } else {
            b
        }
    }
    #[inline]
    fn max(a: f64, b: f64) -> f64 {
        if a > b {
            a
        } else {
            b
        }
    }

    fn perm<T: Copy>(v: &[T; 8], x: usize) -> [T; 8] {
        std::array::from_fn(|i| v[i ^ x])
    }

    /// Key-value cmp_merge: lanes in `mask` take the max of (key, other), the rest the min; a lane
    /// keeps its index when its key is unchanged.
    fn cmp_merge(k: &mut K, ix: &mut I, x: usize, mask: u8) {
        let (k2, i2) = (perm(k, x), perm(ix, x));
        for l in 0..8 {
            let t = if mask >> l & 1 == 1 {
                max(k2[l], k[l])
            } else {
                min(k2[l], k[l])
            };
            if t != k[l] {
                ix[l] = i2[l];
            }
            k[l] = t;
        }
    }

    fn sort_reg(k: &mut K, ix: &mut I) {
        cmp_merge(k, ix, 1, 0xAA);
        cmp_merge(k, ix, 3, 0xCC);
        cmp_merge(k, ix, 1, 0xAA);
        cmp_merge(k, ix, 7, 0xF0);
        cmp_merge(k, ix, 2, 0xCC);
        cmp_merge(k, ix, 1, 0xAA);
    }

    fn bitonic_merge_reg(k: &mut K, ix: &mut I) {
        cmp_merge(k, ix, 4, 0xF0);
        cmp_merge(k, ix, 2, 0xCC);
        cmp_merge(k, ix, 1, 0xAA);
    }

    /// COEX of two registers: lane-wise min to the first, max to the second; indices follow, and
    /// stay put on equal keys.
    fn coex(ka: &mut K, kb: &mut K, ia: &mut I, ib: &mut I) {
        for l in 0..8 {
            let (t1, t2) = (min(ka[l], kb[l]), max(ka[l], kb[l]));
            if t1 != ka[l] {
                std::mem::swap(&mut ia[l], &mut ib[l]);
            }
            ka[l] = t1;
            kb[l] = t2;
        }
    }

    fn reverse<T: Copy>(v: &mut [T; 8]) {
        *v = perm(v, 7);
    }

    fn bitonic_merge_n(keys: &mut [K], idx: &mut [I]) {
        let n = keys.len();
        for i in 0..n / 2 {
            let j = n - i - 1;
            reverse(&mut keys[j]);
            reverse(&mut idx[j]);
            let (a, b) = keys.split_at_mut(j);
            let (c, d) = idx.split_at_mut(j);
            coex(&mut a[i], &mut b[0], &mut c[i], &mut d[0]);
            reverse(&mut keys[j]);
            reverse(&mut idx[j]);
        }
        let mut num = n / 2;
        while num >= 2 {
            for j in (0..n).step_by(num) {
                for i in 0..num / 2 {
                    let (p, q) = (i + j, i + j + num / 2);
                    let (a, b) = keys.split_at_mut(q);
                    let (c, d) = idx.split_at_mut(q);
                    coex(&mut a[p], &mut b[0], &mut c[p], &mut d[0]);
                }
            }
            num /= 2;
        }
        for (k, ix) in keys.iter_mut().zip(idx.iter_mut()) {
            bitonic_merge_reg(k, ix);
        }
    }

    /// argsort_n: sort `arg` (at most 256 entries) by key with bitonic networks.
    fn argsort_n(arr: &[f64], arg: &mut [usize]) {
        let n = arg.len();
        let mut nv = 32;
        while nv > 1 && n * 2 <= nv * 8 {
            nv /= 2;
        }
        let mut keys = vec![[f64::INFINITY; 8]; nv];
        let mut idx = vec![[usize::MAX; 8]; nv];
        for v in 0..nv {
            for l in 0..8 {
                let p = v * 8 + l;
                if p < n {
                    idx[v][l] = arg[p];
                    keys[v][l] = arr[arg[p]];
                }
            }
        }
        for (k, ix) in keys.iter_mut().zip(idx.iter_mut()) {
            sort_reg(k, ix);
        }
        let mut per = 2;
        while per <= nv {
            for i in 0..nv / per {
                bitonic_merge_n(
                    &mut keys[i * per..(i + 1) * per],
                    &mut idx[i * per..(i + 1) * per],
                );
            }
            per *= 2;
        }
        for p in 0..n {
            arg[p] = idx[p / 8][p % 8];
        }
    }

    /// Where partitioned registers are stored: lanes below the pivot go left at `l`, the others
    /// right, ending at `r + 8` (`r` in size_t arithmetic: after the last store it may wrap; it is
    /// not used again); plus the lane-wise running min and max of the keys seen.
    struct Stores {
        l: usize,
        r: usize,
        mins: K,
        maxs: K,
    }

    impl Stores {
        /// partition_vec: compress-store one register's lanes below the pivot at `l`, the others at
        /// `r + 8 - count`, and move both ends.
        fn put(&mut self, arg: &mut [usize], (av, kv): &(I, K), pivot: f64) {
            let ge: Vec<bool> = kv.iter().map(|&k| k >= pivot).collect();
            let amount = ge.iter().filter(|&&g| g).count();
            let mut l = self.l;
            let mut r = self.r.wrapping_add(8) - amount;
            for lane in 0..8 {
                if ge[lane] {
                    arg[r] = av[lane];
                    r += 1;
                } else {
                    arg[l] = av[lane];
                    l += 1;
                }
            }
            for (lane, &k) in kv.iter().enumerate() {
                self.mins[lane] = min(k, self.mins[lane]);
                self.maxs[lane] = max(k, self.maxs[lane]);
            }
            self.l += 8 - amount;
            self.r = self.r.wrapping_sub(amount);
        }
    }

    fn load(arr: &[f64], arg: &[usize], at: usize) -> (I, K) {
        let a: I = std::array::from_fn(|l| arg[at + l]);
        let k: K = std::array::from_fn(|l| arr[a[l]]);
        (a, k)
    }

    /// argpartition_unrolled with 4 registers per step (only called on more than 256 entries);
    /// `right` is exclusive. Returns the first position of the `>= pivot` part.
    fn partition(
        arr: &[f64],
        arg: &mut [usize],
        mut left: usize,
        mut right: usize,
        pivot: f64,
        smallest: &mut f64,
        biggest: &mut f64,
    ) -> usize {
        const U: usize = 4;
        for _ in 0..(right - left) % (U * 8) {
            let v = arr[arg[left]];
            *smallest = if v < *smallest { v } else { *smallest };
            *biggest = if *biggest < v { v } else { *biggest };
            // !(v < pivot): v >= pivot for the NaN-free keys this takes.
            if v >= pivot {
                right -= 1;
                arg.swap(left, right);
            } else {
                left += 1;
            }
        }
        if left == right {
            return left;
        }
        let vl: Vec<(I, K)> = (0..U).map(|ii| load(arr, arg, left + 8 * ii)).collect();
        let vr: Vec<(I, K)> = (0..U)
            .map(|ii| load(arr, arg, right - 8 * (U - ii)))
            .collect();
        let mut st = Stores {
            l: left,
            r: right - 8,
            mins: [*smallest; 8],
            maxs: [*biggest; 8],
        };
        left += U * 8;
        right -= U * 8;
        while right != left {
            let cur: Vec<(I, K)> = if (st.r + 8) - right < left - st.l {
                right -= U * 8;
                (0..U).map(|ii| load(arr, arg, right + ii * 8)).collect()
            } else {
                let c = (0..U).map(|ii| load(arr, arg, left + ii * 8)).collect();
                left += U * 8;
                c
            };
            for reg in &cur {
                st.put(arg, reg, pivot);
            }
        }
        for reg in vl.iter().chain(&vr) {
            st.put(arg, reg, pivot);
        }
        // reducemin / reducemax: the values are what matter.
        *smallest = st.mins.iter().copied().fold(f64::INFINITY, min);
        *biggest = st.maxs.iter().copied().fold(f64::NEG_INFINITY, max);
        st.l
    }

    /// argsort_: `right` inclusive.
    pub(super) fn argsort(
        arr: &[f64],
        arg: &mut [usize],
        left: usize,
        right: usize,
        max_iters: usize,
    ) {
        if max_iters == 0 {
            // No progress (many equal keys): x86-simd-sort hands the range to std::sort.
            std_sort(&mut arg[left..=right], |a, b| arr[a] < arr[b]);
            return;
        }
        if right + 1 - left <= 256 {
            argsort_n(arr, &mut arg[left..=right]);
            return;
        }
        let size = (right - left) / 8;
        let mut s: Vec<f64> = (1..=8).map(|k| arr[arg[left + k * size]]).collect();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pivot = s[4];
        let (mut smallest, mut biggest) = (f64::INFINITY, f64::NEG_INFINITY);
        let p = partition(
            arr,
            arg,
            left,
            right + 1,
            pivot,
            &mut smallest,
            &mut biggest,
        );
        if pivot != smallest {
            argsort(arr, arg, left, p - 1, max_iters - 1);
        }
        if pivot != biggest {
            argsort(arr, arg, p, right, max_iters - 1);
        }
    }

    /// libstdc++'s `std::sort` (introsort: median-of-three pivot, unguarded partition, heapsort
    /// past a depth of 2 floor(log2 n), final insertion sort with threshold 16), step for step, so
    /// that equal keys end in the same order as in the C++ code numpy runs.
    pub(super) fn std_sort(v: &mut [usize], less: impl Fn(usize, usize) -> bool + Copy) {
        let n = v.len();
        if n > 1 {
            let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
            introsort_loop(v, 0, n, depth, less);
            final_insertion_sort(v, 0, n, less);
        }
    }

    const THRESHOLD: usize = 16;

    fn introsort_loop(
        v: &mut [usize],
        first: usize,
        mut last: usize,
        mut depth: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        while last - first > THRESHOLD {
            if depth == 0 {
                make_heap(v, first, last, less);
                sort_heap(v, first, last, less);
                return;
            }
            depth -= 1;
            let cut = partition_pivot(v, first, last, less);
            introsort_loop(v, cut, last, depth, less);
            last = cut;
        }
    }

    fn partition_pivot(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) -> usize {
        let mid = first + (last - first) / 2;
        let (a, b, c) = (first + 1, mid, last - 1);
        let cmp = |x: usize, y: usize| less(v[x], v[y]);
        let pick = if cmp(a, b) {
            if cmp(b, c) {
                b
            } else if cmp(a, c) {
                c
            } else {
                a
            }
        } else if cmp(a, c) {
            a
        } else if cmp(b, c) {
            c
        } else {
            b
        };
        v.swap(first, pick);
        // __unguarded_partition(first + 1, last, pivot = first)
        let (mut lo, mut hi) = (first + 1, last);
        loop {
            while less(v[lo], v[first]) {
                lo += 1;
            }
            hi -= 1;
            while less(v[first], v[hi]) {
                hi -= 1;
            }
            if lo >= hi {
                return lo;
            }
            v.swap(lo, hi);
            lo += 1;
        }
    }

    fn final_insertion_sort(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        if last - first > THRESHOLD {
            insertion_sort(v, first, first + THRESHOLD, less);
            for i in first + THRESHOLD..last {
                unguarded_linear_insert(v, i, less);
            }
        } else {
            insertion_sort(v, first, last, less);
        }
    }

    fn insertion_sort(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        if first == last {
            return;
        }
        for i in first + 1..last {
            if less(v[i], v[first]) {
                let val = v[i];
                v.copy_within(first..i, first + 1);
                v[first] = val;
            } else {
                unguarded_linear_insert(v, i, less);
            }
        }
    }

    fn unguarded_linear_insert(
        v: &mut [usize],
        mut last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        let val = v[last];
        let mut next = last - 1;
        while less(val, v[next]) {
            v[last] = v[next];
            last = next;
            next -= 1;
        }
        v[last] = val;
    }

    fn adjust_heap(
        v: &mut [usize],
        first: usize,
        mut hole: usize,
        len: usize,
        value: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        let top = hole;
        let mut second = hole;
        while second < (len - 1) / 2 {
            second = 2 * (second + 1);
            if less(v[first + second], v[first + second - 1]) {
                second -= 1;
            }
            v[first + hole] = v[first + second];
            hole = second;
        }
        if len & 1 == 0 && second == (len - 2) / 2 {
            second = 2 * (second + 1);
            v[first + hole] = v[first + second - 1];
            hole = second - 1;
        }
        // __push_heap
        let mut parent = if hole > 0 { (hole - 1) / 2 } else { 0 };
        while hole > top && less(v[first + parent], value) {
            v[first + hole] = v[first + parent];
            hole = parent;
            parent = if hole > 0 { (hole - 1) / 2 } else { 0 };
        }
        v[first + hole] = value;
    }

    fn make_heap(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        let len = last - first;
        if len < 2 {
            return;
        }
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[first + parent];
            adjust_heap(v, first, parent, len, value, less);
            if parent == 0 {
                return;
            }
            parent -= 1;
        }
    }

    fn sort_heap(
        v: &mut [usize],
        first: usize,
        mut last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        while last - first > 1 {
            last -= 1;
            // __pop_heap(first, last, last)
            let value = v[last];
            v[last] = v[first];
            adjust_heap(v, first, 0, last - first, value, less);
        }
    }
}
